"""TorchRL adapter: `TorchRLStudentEnv`, an `EnvBase` over `TorchStudentEnv` ([torchrl] extra).

The wrapped env runs with `autoreset_mode="disabled"`, so TorchRL owns resets through its `"_reset"` mask.
A finished env's `("next", "observation")` is the real terminal window, never a NaN-filled
placeholder, so truncated episodes can be bootstrapped. Partial resets are merged with
`torch.where` inside `TorchStudentEnv.reset(mask=...)`: no boolean indexing, no host sync.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from torch_student_env.adapters import require, worker_env_offset

require("torchrl", "torchrl")

from torchrl.data import Binary, Categorical, Composite, Unbounded  # noqa: E402
from torchrl.envs import EnvBase  # noqa: E402

from torch_student_env.env import TorchStudentEnv  # noqa: E402
from torch_student_env.make import make_env  # noqa: E402
from torch_student_env.spec import NUM_ACTIONS, OBSERVATION_KEYS, AutoresetMode, key_shapes  # noqa: E402


class TorchRLStudentEnv(EnvBase):
    """A batch of `num_envs` engines as a TorchRL env with batch_size `[N]`.

    Pass `make_env` keyword arguments (`num_envs`, `step_size`, `device`, `seed`, ...) or an
    existing `env=` built with `autoreset_mode="disabled"`. In a worker process of a multi-process
    collector the default `env_offset` gives each worker its own engines
    (`adapters.worker_env_offset`). Keys: the observation keys of `spec.OBSERVATION_KEYS`,
    `observation` (N, W, 9), `row` (N, 9), `valid` (N, W), `flight` (N, W) and the player-side
    counters `age`, `since_repair`, `repairs` (N,); `action` (N,) in {0, 1, 2}; `reward`, `done`,
    `terminated`, `truncated` (N, 1).
    """

    batch_locked = True

    def __init__(self, env: TorchStudentEnv | None = None, **make_env_kwargs: Any) -> None:
        if env is None:
            make_env_kwargs.setdefault("env_offset", worker_env_offset(make_env_kwargs.get("num_envs", 4)))
            env = make_env(autoreset_mode="disabled", **make_env_kwargs)
        elif make_env_kwargs:
            raise TypeError("pass either env= or make_env keyword arguments, not both")
        if env.autoreset_mode is not AutoresetMode.DISABLED:
            raise ValueError(
                "TorchRLStudentEnv needs an env built with autoreset_mode='disabled': TorchRL resets through '_reset'"
            )
        super().__init__(device=env.device, batch_size=torch.Size([env.num_envs]))
        self.env = env
        self._pending_seed: int | None = None
        self._make_spec()

    def _make_spec(self) -> None:
        n = self.env.num_envs

        def spec(shape, dtype):
            if dtype == torch.bool:
                return Binary(n=shape[-1], shape=shape, dtype=dtype, device=self.device)
            return Unbounded(shape=shape, dtype=dtype, device=self.device)

        layout = key_shapes(OBSERVATION_KEYS, n, self.env.history)
        self.observation_spec = Composite(
            {key: spec(*shape_dtype) for key, shape_dtype in layout.items()}, shape=(n,), device=self.device
        )
        self.action_spec = Categorical(n=NUM_ACTIONS, shape=(n,), dtype=torch.int64, device=self.device)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=self.device)
        flag = Categorical(n=2, shape=(n, 1), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(), shape=(n,), device=self.device
        )

    def _observation(self, td: TensorDictBase) -> dict[str, torch.Tensor]:
        return {k: td[k] for k in OBSERVATION_KEYS}

    def _reset(self, tensordict: TensorDictBase | None, **kwargs: Any) -> TensorDictBase:
        reset = tensordict.get("_reset", None) if tensordict is not None else None
        if reset is None or self._pending_seed is not None or not self.env.has_reset:
            td = self.env.reset(seed=self._pending_seed)
            self._pending_seed = None
        else:
            td = self.env.reset(mask=reset.reshape(self.env.num_envs))
        false = torch.zeros(self.env.num_envs, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {**self._observation(td), "done": false, "terminated": false.clone(), "truncated": false.clone()},
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        td = self.env.step(tensordict["action"].reshape(self.env.num_envs))
        return TensorDict(
            {
                **self._observation(td),
                "reward": td["reward"].unsqueeze(-1),
                "done": td["done"].unsqueeze(-1),
                "terminated": td["terminated"].unsqueeze(-1),
                "truncated": td["truncated"].unsqueeze(-1),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        # Applied at the next full reset, which is what TorchRL does after set_seed.
        self._pending_seed = seed

    def close(self, *, raise_if_closed: bool = True) -> None:
        self.env.close()
        super().close(raise_if_closed=raise_if_closed)

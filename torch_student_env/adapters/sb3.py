"""Stable-Baselines3 adapter ([sb3] extra): `SB3VecEnv`, a `VecEnv` with SB3's conventions:
`infos[i]["terminal_observation"]` and `infos[i]["TimeLimit.truncated"]`. Numpy in, numpy out;
observations are the (W, 9) window, as in `adapters.gymnasium`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torch_student_env.adapters import require
from torch_student_env.adapters.numpy_io import (
    entry,
    make_adapter_env,
    observation,
    require_final_observation,
    spaces,
    to_numpy,
)
from torch_student_env.env import TorchStudentEnv
from torch_student_env.spec import AutoresetMode

_VecEnv = require("stable_baselines3.common.vec_env", "sb3").VecEnv


class SB3VecEnv(_VecEnv):
    """`num_envs` engines as a Stable-Baselines3 `VecEnv`: `PPO("MlpPolicy", SB3VecEnv(...))`."""

    def __init__(self, env: TorchStudentEnv | None = None, player_keys: bool = False, **make_env_kwargs: Any) -> None:
        self.env = env if env is not None else make_adapter_env(make_env_kwargs)
        self.player_keys = player_keys  # a Dict observation: use SB3's MultiInputPolicy
        if self.env.autoreset_mode is not AutoresetMode.SAME_STEP:
            raise ValueError("SB3VecEnv needs autoreset_mode='same_step': SB3 expects VecEnvs to reset themselves")
        require_final_observation(self.env, "SB3VecEnv")
        observation_space, action_space = spaces(self.env, player_keys)
        self.render_mode = None  # read by VecEnv.__init__; nothing to render
        super().__init__(self.env.num_envs, observation_space, action_space)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if any(s is not None for s in self._seeds) else None
        self._reset_seeds()
        return observation(self.env.reset(seed=seed), self.player_keys)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs).astype(np.int64)

    def step_wait(self):
        td = self.env.step(self._actions)
        done, truncated = to_numpy(td["done"]), to_numpy(td["truncated"])
        finals = observation(td, self.player_keys, final=True)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(done):  # per-env info dicts are SB3's format
            infos[i]["terminal_observation"] = entry(finals, i)
            infos[i]["TimeLimit.truncated"] = bool(truncated[i])
            infos[i]["episode"] = {"r": float(td["episode_return"][i]), "l": int(td["episode_length"][i])}
        return observation(td, self.player_keys), to_numpy(td["reward"]), done, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        owner = self if attr_name in self.__dict__ else self.env  # adapter attributes first
        return [getattr(owner, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError(f"SB3VecEnv cannot set {attr_name!r}: the engines share one batched env")

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        raise AttributeError(f"SB3VecEnv has no per-engine sub-envs to call {method_name!r} on")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)

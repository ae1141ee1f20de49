"""Gymnasium adapters ([gym] extra): numpy in, numpy out.

`GymnasiumVectorEnv` is a Gymnasium 1.x `VectorEnv` in `AutoresetMode.SAME_STEP`, which is what the
native env does: a finished env is reset inside the same `step`, whose observation is already the
new episode's, while `info["final_obs"]` (an object array, None elsewhere, mask
`info["_final_obs"]`) holds the terminal window. The Stable-Baselines3 `VecEnv` is
`adapters.sb3.SB3VecEnv` ([sb3] extra). Observations are the (W, 9) window; padding rows are
zeros (see `info["valid"]`). With `player_keys=True` they are a `Dict`: `"observation"`, the
window, and `"player"`, the player-side counters `[age, since_repair, repairs]` as float32 (what
any client of the real server can track), which SB3 reads with `MultiInputPolicy`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch_student_env.adapters import require

gym = require("gymnasium", "gym")
from gymnasium.vector import AutoresetMode, VectorEnv  # noqa: E402

from torch_student_env.adapters.numpy_io import (  # noqa: E402
    entry,
    make_adapter_env,
    observation,
    require_final_observation,
    spaces,
    to_numpy,
)
from torch_student_env.env import TorchStudentEnv  # noqa: E402
from torch_student_env.spec import AutoresetMode as EnvAutoreset  # noqa: E402 (Gymnasium has its own)


class GymnasiumVectorEnv(VectorEnv):
    """`num_envs` engines as one Gymnasium vector env (SAME_STEP autoreset)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, env: TorchStudentEnv | None = None, player_keys: bool = False, **make_env_kwargs: Any) -> None:
        self.env = env if env is not None else make_adapter_env(make_env_kwargs)
        self.player_keys = player_keys
        if self.env.autoreset_mode is not EnvAutoreset.SAME_STEP:
            raise ValueError(
                "GymnasiumVectorEnv implements SAME_STEP autoreset: build the env with autoreset_mode='same_step'"
            )
        require_final_observation(self.env, "GymnasiumVectorEnv")
        self.num_envs = self.env.num_envs
        self.single_observation_space, self.single_action_space = spaces(self.env, player_keys)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every env (`seed` reseeds them all: env i's episode k depends on seed, i, k)."""
        td = self.env.reset(seed=seed)
        return observation(td, self.player_keys), self._info(td)

    def step(self, actions):
        """Step all envs; finished ones are already reset in the returned observation."""
        td = self.env.step(np.asarray(actions))
        info = self._info(td)
        done = to_numpy(td["done"])
        if done.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            finals = observation(td, self.player_keys, final=True)
            for i in np.flatnonzero(done):  # object array by Gymnasium's convention
                final_obs[i] = entry(finals, i)
            info["final_obs"], info["_final_obs"] = final_obs, done
            info["final_info"] = {
                "episode_return": to_numpy(td["episode_return"]),
                "episode_length": to_numpy(td["episode_length"]),
                "episode_failed": to_numpy(td["episode_failed"]),
                "_episode_return": done,
                "_episode_length": done,
                "_episode_failed": done,
            }
            info["_final_info"] = done
        return (
            observation(td, self.player_keys),
            to_numpy(td["reward"]),
            to_numpy(td["terminated"]),
            to_numpy(td["truncated"]),
            info,
        )

    def _info(self, td) -> dict[str, np.ndarray]:
        ones = np.ones(self.num_envs, dtype=bool)
        return {"valid": to_numpy(td["valid"]), "flight": to_numpy(td["flight"]), "_valid": ones, "_flight": ones}

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()


class GymnasiumEnv(gym.Env):
    """One engine as a plain Gymnasium `Env` (`gymnasium.make("TorchStudentEnv-v0")`).

    Observation: the (W, 9) window, float32, zero-padded (`info["valid"]`); actions
    `Discrete(3)`. Episodes end as in the native env; `reset()` starts the next one.
    """

    metadata = {"render_modes": []}

    def __init__(self, player_keys: bool = False, **make_env_kwargs: Any) -> None:
        if make_env_kwargs.pop("num_envs", 1) != 1:
            raise ValueError("GymnasiumEnv is one engine: use gymnasium.make_vec for several")
        self.env = make_adapter_env({"num_envs": 1, "autoreset_mode": "disabled", **make_env_kwargs})
        self.player_keys = player_keys
        self.observation_space, self.action_space = spaces(self.env, player_keys)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or not self.env.has_reset:
            td = self.env.reset(seed=seed)
        else:
            td = self.env.reset(mask=torch.ones(1, dtype=torch.bool, device=self.env.device))
        return entry(observation(td, self.player_keys), 0), {
            "valid": to_numpy(td["valid"][0]),
            "flight": to_numpy(td["flight"][0]),
        }

    def step(self, action):
        td = self.env.step(np.asarray([action]))
        info = {"valid": to_numpy(td["valid"][0]), "flight": to_numpy(td["flight"][0])}
        reward, terminated, truncated = float(td["reward"][0]), bool(td["terminated"][0]), bool(td["truncated"][0])
        return entry(observation(td, self.player_keys), 0), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


ENV_ID = "TorchStudentEnv-v0"


def register_envs() -> None:
    """Register `TorchStudentEnv-v0` for `gymnasium.make` (one engine) and `gymnasium.make_vec`
    (`vectorization_mode="vector_entry_point"`: one batched `GymnasiumVectorEnv`). Idempotent;
    `import torch_student_env` calls it when gymnasium is installed."""
    if ENV_ID not in gym.registry:
        gym.register(
            id=ENV_ID,
            entry_point=f"{__name__}:GymnasiumEnv",
            vector_entry_point=f"{__name__}:GymnasiumVectorEnv",
            disable_env_checker=True,  # the checker's random-action probe adds nothing to a typed, tested env
        )


def __getattr__(name: str) -> Any:
    """Point a search for the SB3 adapter at its module ([sb3] extra); nothing is re-exported."""
    if name == "SB3VecEnv":
        raise AttributeError("SB3VecEnv lives in its own module: from torch_student_env.adapters.sb3 import SB3VecEnv")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

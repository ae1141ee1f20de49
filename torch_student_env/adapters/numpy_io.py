"""What the Gymnasium and Stable-Baselines3 adapters share ([gym] extra): building the env,
its spaces, and its outputs as numpy observations (the (W, 9) window, or a dict of the window
and the player-side counters)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from torch_student_env.adapters import require, worker_env_offset
from torch_student_env.env import TorchStudentEnv
from torch_student_env.make import make_env
from torch_student_env.spec import FINAL_PLAYER_KEYS, NUM_ACTIONS, NUM_FEATURES, PLAYER_KEYS

gym = require("gymnasium", "gym")


def make_adapter_env(make_env_kwargs: dict[str, Any]) -> TorchStudentEnv:
    """`make_env(**kwargs)`, each worker process of a multi-process wrapper on its own engines."""
    make_env_kwargs.setdefault("env_offset", worker_env_offset(make_env_kwargs.get("num_envs", 4)))
    return make_env(**make_env_kwargs)


def require_final_observation(env: TorchStudentEnv, name: str) -> None:
    """SAME_STEP autoreset hands out each finished episode's last window: the env must keep it."""
    if not env.config.final_observation:
        raise ValueError(f"{name} reports final observations: build the env with final_observation=True")


def spaces(env: TorchStudentEnv, player_keys: bool = False) -> tuple[Any, Any]:
    """(observation space, action space) of one engine: the window, or a `Dict` of the window and
    the counters (`player_keys`), and `Discrete(3)`."""
    window = gym.spaces.Box(-np.inf, np.inf, shape=(env.history, NUM_FEATURES), dtype=np.float32)
    if player_keys:
        counters = gym.spaces.Box(0.0, np.inf, shape=(len(PLAYER_KEYS),), dtype=np.float32)
        window = gym.spaces.Dict({"observation": window, "player": counters})
    return window, gym.spaces.Discrete(NUM_ACTIONS)


def observation(td, player_keys: bool, final: bool = False) -> np.ndarray | dict[str, np.ndarray]:
    """The window (N, W, 9), with the player-side counters (N, 3) when asked; `final`: those an
    episode ended with (`spec.FINAL_PLAYER_KEYS`)."""
    window = to_numpy(td["final_observation" if final else "observation"])
    if not player_keys:
        return window
    keys = [FINAL_PLAYER_KEYS[k] for k in PLAYER_KEYS] if final else PLAYER_KEYS
    return {"observation": window, "player": np.stack([to_numpy(td[k]) for k in keys], axis=-1).astype(np.float32)}


def entry(observation: np.ndarray | dict[str, np.ndarray], i: int) -> np.ndarray | dict[str, np.ndarray]:
    """Env i's entry of a batched observation (array or dict of arrays)."""
    if isinstance(observation, dict):
        return {k: v[i] for k, v in observation.items()}
    return observation[i]


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A tensor on the host, as numpy."""
    return x.detach().cpu().numpy()

"""Groups: N engines of one `vectorized/episodes/create` as one env, stepped together.

A group is one `TorchStudentEnv` made with `client_view.client_env_options` (a single-episode
`episode/create` is a group of one). A vectorized step is one partial `env.step(actions,
mask=...)` per (group, step size) it touches, never a loop of single engines; the answers are
`client_view`'s reading of its outputs. Callers hold the group's lock (`sessions.holding`).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch_student_env.client_view import client_env_options, on_host, reset_info, step_info, step_rows
from torch_student_env.env import TorchStudentEnv
from torch_student_env.make import make_env
from torch_student_env.server.replay import Replay
from torch_student_env.sim.params import SimParams


@dataclass
class Group:
    """N engines as one env, one `Replay` record each, and the lock that guards them."""

    group_id: str
    env: TorchStudentEnv
    max_steps_per_episode: int
    auto_reset: bool
    replays: list[Replay]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def episode_ids(self) -> list[str]:
        return [r.episode_id for r in self.replays]


def new_group(
    num_envs: int, max_steps_per_episode: int, auto_reset: bool, hidden_state: bool, params: SimParams
) -> Group:
    """A group of fresh engines, every one ready (a client's reset starts its next episode)."""
    options = client_env_options(auto_reset, hidden_state, max_steps_per_episode)
    # never waits for a compiled step, whatever the environment says: a request is answered now
    env = make_env(num_envs=num_envs, seed=secrets.randbits(62), sim_params=params, wait_compiled=False, **options)
    env.reset()
    replays = [Replay(secrets.token_hex(8)) for _ in range(num_envs)]
    return Group(secrets.token_hex(6), env, max_steps_per_episode, auto_reset, replays)


def restart(
    group: Group, engines: list[int], hidden_state: bool, seeded: dict[int, tuple[int, int]] | None = None
) -> dict[int, tuple[list[float], dict]]:
    """`env.reset(mask=...)` of `engines`: first row and info of each.

    `seeded[i] = (seed, env_index)` re-keys engine i first (`env.seed_engines`), as engine
    `env_index` of `seed`.
    """
    n = group.env.num_envs
    mask = torch.zeros(n, dtype=torch.bool)
    mask[engines] = True
    if seeded:
        which = torch.zeros(n, dtype=torch.bool)
        values = torch.zeros((2, n), dtype=torch.int64)
        for i, (seed, env_index) in seeded.items():
            which[i], values[0, i], values[1, i] = True, seed, env_index
        group.env.seed_engines(which, values[0], values[1])
    out = on_host(group.env.reset(mask=mask))
    fresh = {}
    for i in engines:
        group.replays[i].has_reset = True
        fresh[i] = (out["row"][i].tolist(), reset_info(out, i, group.replays[i].episode_id, hidden_state))
    return fresh


def step(
    group: Group, step_size: int, actions: dict[int, int], hidden_state: bool
) -> tuple[dict[str, np.ndarray], dict[int, dict[str, Any]]]:
    """One partial step of the engines in `actions` (engine -> action): the env's outputs on the
    host and each engine's answer (rows, reward, flags, info, and `failed_first_flight`)."""
    env = group.env
    mask = torch.zeros(env.num_envs, dtype=torch.bool)
    chosen = torch.zeros(env.num_envs, dtype=torch.int64)
    index = torch.tensor(list(actions), dtype=torch.int64)
    mask[index], chosen[index] = True, torch.tensor(list(actions.values()), dtype=torch.int64)
    out = on_host(env.step(chosen, step_size, mask=mask))
    answers = {
        i: {
            "rows": step_rows(out, i).tolist(),
            "reward": float(out["reward"][i]),
            "terminated": bool(out["terminated"][i]),
            "truncated": bool(out["truncated"][i]),
            "info": step_info(out, i, group.replays[i].episode_id, hidden_state),
            "failed_first_flight": bool(out["failed_first_flight"][i]),
        }
        for i in actions
    }
    return out, answers


def status(group: Group, i: int) -> dict[str, Any]:
    """Where engine i stands (`env.current()`), with its protocol counters."""
    replay, now = group.replays[i], on_host(group.env.current())
    return {
        "episode_id": replay.episode_id,
        "vectorized_group_id": group.group_id,
        "step": int(now["age"][i]),
        "terminated": bool(now["terminated"][i]),
        "truncated": bool(now["truncated"][i]),
        "total_reward": float(now["return_so_far"][i]),
        "max_steps_per_episode": group.max_steps_per_episode,
        "step_counter": replay.step_counter,
        "reset_counter": replay.reset_counter,
        "observation": now["row"][i].tolist(),
    }

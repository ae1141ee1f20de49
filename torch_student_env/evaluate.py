"""Batched evaluation: run a policy until every env has finished its first k episodes.

Episode i of env j is a pure function of (seed, j, i) and the policy, so a fixed seed and env
count give the same episodes for every policy: comparisons are paired, not just averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from torch_student_env.env import TorchStudentEnv

Policy = Callable[[TensorDict], torch.Tensor]


@dataclass(frozen=True)
class Episodes:
    """Totals of finished episodes, flattened env-major: shapes (E,) for E = N * k episodes."""

    returns: torch.Tensor  # float32
    lengths: torch.Tensor  # int64, flights flown
    repairs: torch.Tensor  # int64
    failed: torch.Tensor  # bool
    finish_step: torch.Tensor  # int64, env step at which each episode ended (orders them in time)

    def __len__(self) -> int:
        return self.returns.numel()


@torch.no_grad()
def run_episodes(
    env: TorchStudentEnv,
    policy: Policy,
    episodes_per_env: int = 1,
    max_env_steps: int | None = None,
    progress: bool = False,
) -> Episodes:
    """Reset `env` and step it with `policy` until each env finished `episodes_per_env` episodes.

    Episodes beyond the first k of an env are ignored, so the set of episodes does not depend on
    how fast other envs finish. Needs `auto_reset=True`.
    """
    if not env.config.auto_reset:
        raise ValueError("run_episodes needs an env with auto_reset=True")
    n, k, dev = env.num_envs, episodes_per_env, env.device
    if max_env_steps is None:  # enough for k episodes that all run to the time limit
        max_env_steps = k * (math.ceil(env.config.max_steps_per_episode / env.step_size) + 1)
    returns = torch.zeros(n, k + 1, device=dev)  # column k is a sink for surplus episodes
    lengths = torch.zeros(n, k + 1, dtype=torch.int64, device=dev)
    repairs = torch.zeros_like(lengths)
    failed = torch.zeros(n, k + 1, dtype=torch.bool, device=dev)
    finish = torch.zeros_like(lengths)
    count = torch.zeros(n, dtype=torch.int64, device=dev)

    bar = _progress(progress, max_env_steps, "evaluating")
    td = env.reset()
    for step in range(max_env_steps):
        td = env.step(policy(td))
        done = td["done"]
        slot = torch.where(done, count.clamp(max=k), k).unsqueeze(1)
        returns.scatter_(1, slot, td["episode_return"].unsqueeze(1))
        lengths.scatter_(1, slot, td["episode_length"].unsqueeze(1))
        repairs.scatter_(1, slot, td["episode_repairs"].unsqueeze(1))
        failed.scatter_(1, slot, td["episode_failed"].unsqueeze(1))
        finish.scatter_(1, slot, torch.full_like(slot, step))
        count = count + done.long()
        if bar is not None:
            bar.update(1)
        if step % 8 == 7 and bool((count >= k).all()):
            break
    if bar is not None:
        bar.close()
    if not bool((count >= k).all()):
        raise RuntimeError(f"only {int((count >= k).sum())}/{n} envs finished {k} episodes in {max_env_steps} steps")
    return Episodes(
        returns=returns[:, :k].reshape(-1),
        lengths=lengths[:, :k].reshape(-1),
        repairs=repairs[:, :k].reshape(-1),
        failed=failed[:, :k].reshape(-1),
        finish_step=finish[:, :k].reshape(-1),
    )


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a nicety of the [examples] extra
        return None
    return tqdm(total=total, desc=desc, leave=False)

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


def leaderboard_metric(episodes: Episodes, last: int = 100) -> float:
    """The challenge's leaderboard score: mean return of the last `last` episodes to finish.

    Episodes are ordered by the env step at which they ended, ties by env index (stable sort of
    the env-major layout), so the metric is deterministic.
    """
    order = torch.sort(episodes.finish_step, stable=True).indices
    return episodes.returns[order][-last:].mean().item()


def summarize(episodes: Episodes) -> dict[str, float]:
    """Leaderboard metric, mean return with a 95 % normal CI, failure rate, repairs, life."""
    n = len(episodes)
    returns = episodes.returns.double()
    std = returns.std().item() if n > 1 else 0.0
    return {
        "episodes": n,
        "leaderboard": leaderboard_metric(episodes),
        "mean_return": returns.mean().item(),
        "ci95": 1.96 * std / math.sqrt(n),
        "failure_rate": episodes.failed.double().mean().item(),
        "mean_repairs": episodes.repairs.double().mean().item(),
        "mean_life": episodes.lengths.double().mean().item(),
    }


def evaluate_policies(
    policies: dict[str, Policy],
    num_envs: int = 1024,
    episodes_per_env: int = 1,
    seed: int = 10_000,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **env_kwargs,
) -> dict[str, dict[str, float]]:
    """Evaluate each policy on the same held-out episodes (same seed, same env count).

    The env is built with `privileged=True` so the oracle can run; policies that read only the
    observation keys are unaffected.
    """
    from torch_student_env.make import make_env

    results = {}
    for name, policy in policies.items():
        env = make_env(num_envs=num_envs, seed=seed, device=device, privileged=True, **env_kwargs)
        results[name] = summarize(run_episodes(env, policy, episodes_per_env, progress=progress))
        env.close()
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of `evaluate_policies` results, best mean return first."""
    lines = [
        "| policy | leaderboard (last 100) | mean return ± 95% CI | failure rate | repairs | life (flights) "
        "| episodes |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["mean_return"]):
        lines.append(
            f"| {name} | {r['leaderboard']:,.0f} | {r['mean_return']:,.0f} ± {r['ci95']:,.0f} | "
            f"{100 * r['failure_rate']:.1f}% | {r['mean_repairs']:.2f} | {r['mean_life']:.0f} | {r['episodes']} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def record_episode(policy: Policy, seed: int = 0, max_env_steps: int = 1000, **env_kwargs) -> dict:
    """Run one engine (privileged, no auto-reset) for one episode; numpy arrays for `plot_episode`.

    Keys: `flight` (F,), `sensors` (F, 7), `phase` (F,), `health` (F,) per flight from the reset
    reading on; `action`, `action_flight` (flight index when the action was taken) per step;
    `failed`, `episode_return`.
    """
    from torch_student_env.make import make_env
    from torch_student_env.spec import NUM_SENSORS, PHASE_COLUMN

    env = make_env(num_envs=1, seed=seed, privileged=True, auto_reset=False, **env_kwargs)
    td = env.reset()
    rows, health, flights, actions, action_flights = [], [], [], [], []
    last = -1
    for _ in range(max_env_steps + 1):
        new = td["flight"][0] > last  # rows flown since the previous step
        rows.append(td["observation"][0][new])
        health.append(td["window_health"][0][new])
        flights.append(td["flight"][0][new])
        last = int(td["flight"][0, -1])
        if "done" in td.keys() and bool(td["done"][0]):
            break
        action = policy(td)
        actions.append(int(action[0]))
        action_flights.append(last)
        td = env.step(action)
    obs = torch.cat(rows).cpu().numpy()
    result = {
        "flight": torch.cat(flights).cpu().numpy(),
        "sensors": obs[:, :NUM_SENSORS],
        "phase": obs[:, PHASE_COLUMN].astype(int),
        "health": torch.cat(health).cpu().numpy(),
        "action": torch.tensor(actions, dtype=torch.int64).numpy(),
        "action_flight": torch.tensor(action_flights, dtype=torch.int64).numpy(),
        "failed": bool(td["episode_failed"][0]),
        "episode_return": float(td["episode_return"][0]),
    }
    env.close()
    return result

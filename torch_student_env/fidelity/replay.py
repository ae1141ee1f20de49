"""Replay logged action sequences on the embedded simulator, batched, and log them the same way."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import torch

from torch_student_env.fidelity.data import LoggedEpisode
from torch_student_env.make import make_env
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import Action

STEP_SIZE = 10  # the logs were taken with the client's default


def repair_period(actions: tuple[int, ...]) -> int | None:
    """Steps between this episode's last two repairs, or None with fewer than two repairs."""
    repairs = [i for i, a in enumerate(actions) if a == Action.REPAIR]
    return repairs[-1] - repairs[-2] if len(repairs) >= 2 else None


def policy_period(action_lists: list[tuple[int, ...]]) -> int | None:
    """The policy's repair period: the most common number of steps between consecutive repairs
    over its episodes (the earliest such on a tie), or None if no episode repairs twice."""
    gaps = Counter(
        j - i for actions in action_lists for i, j in pairwise([k for k, a in enumerate(actions) if a == Action.REPAIR])
    )
    return min(gaps, key=lambda gap: (-gaps[gap], gap)) if gaps else None


def continuations(action_lists: list[tuple[int, ...]], extra_steps: int = 0) -> list[tuple[int, ...]]:
    """Each action list continued the way its policy would have continued it, `extra_steps` past
    the longest list.

    A logged episode's actions stop where its engine failed, so a simulated engine that outlives
    it has no logged action to take. It takes the ones the same agent took in its longest
    episode with the same beginning (agents that follow a schedule repeat it), then keeps to the
    policy's own rule: a policy that repairs every k steps (the episode's last gap between
    repairs, else the policy's most common one, `policy_period`) repairs every k steps after its
    last repair; one that never repairs twice keeps flying. Without this, a replay would fly
    engines past the repairs the agent makes, and fail them late and at the wrong age.
    """
    by_length = sorted(set(action_lists), key=len, reverse=True)
    default_period = policy_period(action_lists)
    horizon = (len(by_length[0]) if by_length else 0) + extra_steps
    extended: dict[tuple[int, ...], tuple[int, ...]] = {}
    for actions in by_length:
        if actions in extended:
            continue
        longest = list(next(other for other in by_length if other[: len(actions)] == actions))
        if longest and longest[-1] == Action.SELL:  # a sold episode has nothing to continue
            extended[actions] = tuple(longest)
            continue
        period = repair_period(tuple(longest)) or default_period
        last_repair = max((i for i, a in enumerate(longest) if a == Action.REPAIR), default=None)
        while len(longest) < horizon:
            due = period is not None and last_repair is not None and len(longest) - last_repair == period
            longest.append(int(Action.REPAIR if due else Action.DO_NOTHING))
            last_repair = len(longest) - 1 if due else last_repair
        extended[actions] = tuple(longest)
    return [extended[actions] for actions in action_lists]


def replay(
    action_lists: list[tuple[int, ...]],
    seeds: int = 8,
    seed: int = 0,
    params: SimParams | None = None,
    extra_steps: int = 60,
    agent: str = "replay",
) -> list[list[LoggedEpisode]]:
    """Each action list on `seeds` simulated engines: `result[i][s]` is list i on engine s.

    An engine follows its list while it lasts and then keeps flying (action 0) until it fails,
    at most `extra_steps` steps more, so that every replay of a failed episode has a failure
    step to compare. Engine (i, s) is engine `s * len(action_lists) + i` of one env: all replays
    run as one batch, `num_envs = seeds * len(action_lists)`.
    """
    n_lists = len(action_lists)
    num_envs = n_lists * seeds
    env = make_env(
        num_envs=num_envs, step_size=STEP_SIZE, seed=seed, autoreset_mode="disabled", sim_params=params, fast=False
    )
    longest = max(len(a) for a in action_lists)
    plan = torch.zeros(longest + extra_steps, n_lists, dtype=torch.int64)
    for i, actions in enumerate(action_lists):
        plan[: len(actions), i] = torch.tensor(actions)
    plan = plan.repeat(1, seeds)  # (T, num_envs)

    env.reset()
    alive = torch.ones(num_envs, dtype=torch.bool)
    log = {key: [] for key in ("action", "reward", "flights", "row", "rows", "failed", "first_flight", "alive")}
    for actions in plan:
        if not bool(alive.any()):
            break
        td = env.step(actions)
        log["action"].append(actions), log["alive"].append(alive.clone())
        # `age` is the server's counter: the flights flown, the failing one included (it has no row)
        log["reward"].append(td["reward"]), log["flights"].append(td["age"])
        log["row"].append(td["row"]), log["failed"].append(td["episode_failed"])
        log["rows"].append(td["new_rows"]), log["first_flight"].append(td["failed_first_flight"])
        alive &= ~td["done"]
    stacked = {key: torch.stack(value) for key, value in log.items()}
    episodes = [_episode(stacked, e, agent) for e in range(num_envs)]
    return [[episodes[s * n_lists + i] for s in range(seeds)] for i in range(n_lists)]


def _episode(log: dict[str, torch.Tensor], e: int, agent: str) -> LoggedEpisode:
    steps = int(log["alive"][:, e].sum())
    failed = bool(log["failed"][:steps, e].any())
    rows_per_step = tuple(log["rows"][:steps, e].tolist())
    return LoggedEpisode(
        actions=tuple(log["action"][:steps, e].tolist()),
        rewards=tuple(log["reward"][:steps, e].tolist()),
        flights=tuple(log["flights"][:steps, e].tolist()),
        rows=tuple(map(tuple, log["row"][:steps, e].tolist())),
        failed=failed,
        first_flight_failure=bool(log["first_flight"][:steps, e].any()),
        rows_per_step=rows_per_step,
        agent=agent,
    )


def schedule(repair_every: int, sell_at: int, step_size: int = STEP_SIZE) -> tuple[int, ...]:
    """The actions of a fixed schedule: repair every `repair_every` flights, sell at `sell_at`."""
    actions, flights = [], 0
    while flights < sell_at:
        due = flights > 0 and flights % repair_every == 0
        actions.append(int(Action.REPAIR if due else Action.DO_NOTHING))
        flights += step_size
    return tuple(actions) + (int(Action.SELL),)

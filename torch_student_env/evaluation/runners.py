"""Runners: a policy played on the env until each engine has finished its episodes (in parallel,
`run_episodes`), as a stream of a few envs the way a student plays the challenge (`run_stream`),
over several policies or models (`evaluate_policies`, `evaluate_variants`), or one engine's
episode recorded for a plot (`record_episode`).

Episode i of env j is a pure function of (seed, j, i) and the policy, so a fixed seed and env
count give the same episodes for every policy: comparisons are paired, not just averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict

from torch_student_env.client_view import EPISODE_KEYS, finished_episodes, newest, on_host
from torch_student_env.env import TorchStudentEnv
from torch_student_env.evaluation.episodes import Episodes
from torch_student_env.evaluation.stats import challenge_score, paired_difference, summarize
from torch_student_env.leaderboard import SCORE_WINDOW, FinishedEpisode
from torch_student_env.make import make_env
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import NUM_SENSORS, PHASE_COLUMN, AutoresetMode

Policy = Callable[[TensorDict], torch.Tensor]
# The held-out engines every evaluation plays by default; training and validation use other seeds.
HELD_OUT_SEED = 10_000


def evaluation_env_options(env_kwargs: dict) -> dict:
    """`make_env` options of an evaluation's env, which plays a few hundred steps (each engine's
    episode once, or a stream of about 100 episodes on 4 envs): eager unless `fast` is given. Its
    episodes are then the same whatever the compile cache holds (a compiled step agrees with the
    eager one to float rounding, not bit for bit), and no evaluation starts a build: the eager
    steps of a whole evaluation of 1,024 engines take under a second."""
    return {"fast": False} | env_kwargs


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
    how fast other envs finish. Needs `autoreset_mode="same_step"`.
    """
    if env.autoreset_mode is not AutoresetMode.SAME_STEP:
        raise ValueError(f"run_episodes needs autoreset_mode='same_step', got {env.autoreset_mode.value!r}")
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


@torch.no_grad()
def run_stream(
    policy: Policy,
    num_envs: int = 4,
    last: int = SCORE_WINDOW,
    warmup: int | None = None,
    seed: int = HELD_OUT_SEED,
    device: torch.device | str = "cpu",
    max_env_steps: int = 200_000,
    **env_kwargs,
) -> Episodes:
    """Play episodes one after another on `num_envs` envs, as a student does with the client,
    until `warmup + last` have finished; the finished episodes in the order they ended.

    The challenge ranks the total reward of a user's last 100 finished episodes: a stream where
    short episodes finish, and so count, more often than long ones. `warmup` (default: one
    episode per env) drops the first episodes, which all start together.
    """
    warmup = num_envs if warmup is None else warmup
    options = evaluation_env_options(env_kwargs)
    env = make_env(num_envs=num_envs, seed=seed, device=device, privileged=True, **options)
    records: list[FinishedEpisode] = []
    finish_steps: list[int] = []
    td = env.reset()
    for step in range(max_env_steps):
        td = env.step(policy(td))
        # a stream of a few envs is host-paced anyway: its finished episodes are read as a client's
        ended = finished_episodes(on_host(td.select(*EPISODE_KEYS)))
        records += ended
        finish_steps += [step] * len(ended)
        if len(records) >= warmup + last:
            break
    env.close()
    if len(records) < warmup + last:
        raise RuntimeError(f"only {len(records)} episodes finished in {max_env_steps} steps of {num_envs} envs")
    return Episodes.from_records(records[warmup:], finish_steps[warmup:], device=td.device)


def evaluate_policies(
    policies: dict[str, Policy],
    num_envs: int = 1024,
    episodes_per_env: int = 1,
    seed: int = HELD_OUT_SEED,
    device: torch.device | str = "cpu",
    progress: bool = False,
    stream_envs: int = 4,
    paired_with: str | Sequence[str] | None = None,
    score_episodes: int = SCORE_WINDOW,
    **env_kwargs,
) -> dict[str, dict[str, float]]:
    """Each policy on the same held-out episodes, two ways:

    - `mean_return` ± `ci95` over `num_envs * episodes_per_env` episodes run in parallel: the
      precise comparison (every policy plays the same engines);
    - `score_total` / `score_mean`: the challenge's metric, the last `score_episodes` (100) of a stream on
      `stream_envs` envs (`run_stream`); `score_episodes` other than the challenge's 100 gives a
      quicker, noisier look.

    `paired_with` names one of `policies`: each result then also holds `paired_diff` ± `paired_ci95`,
    its mean return less that policy's, episode by episode on the same engines (`paired_difference`).
    Several names: the first gives `paired_diff` ± `paired_ci95`, and `paired[name]` holds the
    difference to each (`{"paired_diff", "paired_ci95"}`).

    The env is built with `privileged=True` so the oracle can run; policies that read only the
    observation keys are unaffected.
    """
    references = [paired_with] if isinstance(paired_with, str) else list(paired_with or ())
    for reference in references:
        if reference not in policies:
            raise ValueError(f"paired_with={reference!r} is not one of the policies {list(policies)}")
    results, returns = {}, {}
    for name, policy in policies.items():
        env = make_env(
            num_envs=num_envs, seed=seed, device=device, privileged=True, **evaluation_env_options(env_kwargs)
        )
        episodes = run_episodes(env, policy, episodes_per_env, progress=progress)
        results[name], returns[name] = summarize(episodes), episodes.returns
        env.close()
        stream = run_stream(
            policy, num_envs=stream_envs, last=score_episodes, seed=seed + 1, device=device, **env_kwargs
        )
        results[name] |= challenge_score(stream, last=score_episodes)
    if references:
        for name in policies:
            results[name] |= paired_difference(returns[name], returns[references[0]])
            if not isinstance(paired_with, str):
                results[name]["paired"] = {ref: paired_difference(returns[name], returns[ref]) for ref in references}
    return results


def evaluate_variants(
    policies: dict[str, Callable[[SimParams], Policy]],
    variants: dict[str, SimParams],
    num_envs: int = 1024,
    seed: int = HELD_OUT_SEED,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **env_kwargs,
) -> dict[str, dict[str, dict[str, float]]]:
    """`results[policy][variant]`: each policy on the same held-out engines of each variant.

    A policy is given as a factory of the variant's `SimParams`, so that a policy which knows
    the model (the oracle) can plan on each; the others ignore it. `env_kwargs` go to `make_env`
    (a `history`, say), as in `evaluate_policies`.
    """
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in policies}
    for variant, params in variants.items():
        for name, factory in policies.items():
            options = evaluation_env_options(env_kwargs)
            env = make_env(num_envs=num_envs, seed=seed, device=device, privileged=True, sim_params=params, **options)
            results[name][variant] = summarize(run_episodes(env, factory(params), progress=progress))
            env.close()
    return results


@torch.no_grad()
def record_episode(policy: Policy, seed: int = 0, max_env_steps: int = 1000, **env_kwargs) -> dict:
    """Run one engine (privileged, no auto-reset) for one episode; numpy arrays for `plot_episode`.

    Keys: `flight` (F,), `sensors` (F, 7), `phase` (F,), `health` (F,) per flight from the reset
    reading on; `action`, `action_flight` (flight index when the action was taken) per step;
    `failed`, `episode_return`.
    """
    options = evaluation_env_options(env_kwargs)
    env = make_env(num_envs=1, seed=seed, privileged=True, autoreset_mode="disabled", **options)
    if env.history < env.step_size:
        raise ValueError(f"record_episode needs history >= step_size to see every row, got {env.history}")
    td = env.reset()
    rows, health, flights, actions, action_flights = [], [], [], [], []
    k = 1  # the reset row
    for _ in range(max_env_steps + 1):
        # the rows this call added are the newest k of the window (a window holds a step's rows)
        rows.append(newest(td["observation"][0], k))
        health.append(newest(td["window_health"][0], k))
        flights.append(newest(td["flight"][0], k))
        if "done" in td.keys() and bool(td["done"][0]):
            break
        action = policy(td)
        actions.append(int(action[0]))
        action_flights.append(int(td["flight"][0, -1]))
        td = env.step(action)
        k = int(td["new_rows"][0])
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

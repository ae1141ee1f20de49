"""Batched evaluation: run a policy until every env has finished its first k episodes.

    python -m torch_student_env.evaluate                                  # all five baselines
    python -m torch_student_env.evaluate --policy runs/ppo_cnn/best.pt --policy time_based
    python -m torch_student_env.evaluate --episodes 2048 --seed 123 --out eval.md
    python -m torch_student_env.evaluate --variants plausible   # each policy on every plausible model
    python -m torch_student_env.evaluate --policy best.pt --policy belief --paired-with belief

A `--policy` is a baseline name (random, do_nothing, time_based, threshold, belief, oracle) or a checkpoint
written by examples/ppo_cnn.py or examples/dqn_cnn.py, loaded with `weights_only=True`.
`--variants` scores every policy on each model of an ensemble (`sim.variants`) and reports its
worst: a policy that relies on one extrapolation of the data shows it there. The oracle plans on
each variant's own model (it knows the hidden state, and so the model); every other policy,
`belief` included, plays the fitted model's plan on all.

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
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import AutoresetMode

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
    last: int = 100,
    warmup: int | None = None,
    seed: int = 10_000,
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
    from torch_student_env.make import make_env

    warmup = num_envs if warmup is None else warmup
    env = make_env(num_envs=num_envs, seed=seed, device=device, privileged=True, **env_kwargs)
    keys = ("episode_return", "episode_length", "episode_repairs", "episode_failed")
    finished: dict[str, list[torch.Tensor]] = {k: [] for k in keys + ("finish_step",)}
    count, td = 0, env.reset()
    for step in range(max_env_steps):
        td = env.step(policy(td))
        done = td["done"]
        n_done = int(done.sum())  # one host read per step: a stream of a few envs is host-paced anyway
        if n_done:
            for k in keys:
                finished[k].append(td[k][done])
            finished["finish_step"].append(torch.full((n_done,), step, dtype=torch.int64, device=done.device))
            count += n_done
            if count >= warmup + last:
                break
    env.close()
    if count < warmup + last:
        raise RuntimeError(f"only {count} episodes finished in {max_env_steps} steps of {num_envs} envs")
    # within a step, env order: torch.cat keeps it, since td[k][done] is in env order
    cat = {k: torch.cat(v)[warmup:] for k, v in finished.items()}
    return Episodes(
        returns=cat["episode_return"],
        lengths=cat["episode_length"],
        repairs=cat["episode_repairs"],
        failed=cat["episode_failed"],
        finish_step=cat["finish_step"],
    )


def challenge_score(stream: Episodes, last: int = 100) -> dict[str, float]:
    """The challenge's leaderboard figures over the last `last` episodes of a stream, as the
    server's leaderboard computes them (`leaderboard.score_metrics`, the one owner of the rule)."""
    from torch_student_env.leaderboard import FinishedEpisode, score_metrics

    columns = (stream.returns.double(), stream.repairs, stream.lengths, stream.failed)
    episodes = [FinishedEpisode(*row, finished_at="") for row in zip(*(c.tolist() for c in columns), strict=True)]
    metrics = score_metrics(episodes, last)
    return {
        "score_total": metrics.get("total_reward", 0.0),
        "score_mean": metrics.get("avg_reward", 0.0),
        "score_episodes": metrics.get("total_episodes", 0),
    }


def summarize(episodes: Episodes) -> dict[str, float]:
    """Mean return with a 95 % normal CI, failure rate, repairs and life over a set of episodes."""
    n = len(episodes)
    returns = episodes.returns.double()
    std = returns.std().item() if n > 1 else 0.0
    return {
        "episodes": n,
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
    stream_envs: int = 4,
    paired_with: str | None = None,
    **env_kwargs,
) -> dict[str, dict[str, float]]:
    """Each policy on the same held-out episodes, two ways:

    - `mean_return` ± `ci95` over `num_envs * episodes_per_env` episodes run in parallel: the
      precise comparison (every policy plays the same engines);
    - `score_total` / `score_mean`: the challenge's metric, the last 100 episodes of a stream on
      `stream_envs` envs (`run_stream`).

    `paired_with` names one of `policies`: each result then also holds `paired_diff` ± `paired_ci95`,
    its mean return less that policy's, episode by episode on the same engines (`paired_difference`).

    The env is built with `privileged=True` so the oracle can run; policies that read only the
    observation keys are unaffected.
    """
    from torch_student_env.make import make_env

    if paired_with is not None and paired_with not in policies:
        raise ValueError(f"paired_with={paired_with!r} is not one of the policies {list(policies)}")
    results, returns = {}, {}
    for name, policy in policies.items():
        env = make_env(num_envs=num_envs, seed=seed, device=device, privileged=True, **env_kwargs)
        episodes = run_episodes(env, policy, episodes_per_env, progress=progress)
        results[name], returns[name] = summarize(episodes), episodes.returns
        env.close()
        stream = run_stream(policy, num_envs=stream_envs, seed=seed + 1, device=device, **env_kwargs)
        results[name] |= challenge_score(stream)
    if paired_with is not None:
        for name in policies:
            results[name] |= paired_difference(returns[name], returns[paired_with])
    return results


def paired_difference(returns: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean of `returns - reference` over the same episodes, with a 95 % normal CI: far tighter than
    the two CIs apart, because the engines' luck is shared (`paired_diff`, `paired_ci95`)."""
    if returns.shape != reference.shape:
        raise ValueError(
            f"paired returns must be the same episodes: shapes {tuple(returns.shape)} and {tuple(reference.shape)}"
        )
    diff = returns.double() - reference.double()
    n = diff.numel()
    return {
        "paired_diff": diff.mean().item(),
        "paired_ci95": 1.96 * diff.std().item() / math.sqrt(n) if n > 1 else 0.0,
    }


def evaluate_variants(
    policies: dict[str, Callable[[SimParams], Policy]],
    variants: dict[str, SimParams],
    num_envs: int = 1024,
    seed: int = 10_000,
    device: torch.device | str = "cpu",
    progress: bool = False,
    **env_kwargs,
) -> dict[str, dict[str, dict[str, float]]]:
    """`results[policy][variant]`: each policy on the same held-out engines of each variant.

    A policy is given as a factory of the variant's `SimParams`, so that a policy which knows
    the model (the oracle) can plan on each; the others ignore it. `env_kwargs` go to `make_env`
    (a `history`, say), as in `evaluate_policies`.
    """
    from torch_student_env.make import make_env

    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in policies}
    for variant, params in variants.items():
        for name, factory in policies.items():
            env = make_env(
                num_envs=num_envs, seed=seed, device=device, privileged=True, sim_params=params, **env_kwargs
            )
            results[name][variant] = summarize(run_episodes(env, factory(params), progress=progress))
            env.close()
    return results


def worst_variant(per_variant: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The variant on which a policy's mean return is lowest, and its figures there."""
    return min(per_variant.items(), key=lambda kv: kv[1]["mean_return"])


def markdown_variant_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Mean return ± CI of each policy on each variant, and its worst; best worst case first."""
    variants = list(next(iter(results.values())))
    lines = [
        "| policy | " + " | ".join(variants) + " | worst |",
        "|---|" + "---:|" * (len(variants) + 1),
    ]
    for name, per in sorted(results.items(), key=lambda kv: -worst_variant(kv[1])[1]["mean_return"]):
        cells = [
            f"{per[v]['mean_return']:,.0f} ± {per[v]['ci95']:,.0f} ({100 * per[v]['failure_rate']:.0f}%)"
            for v in variants
        ]
        worst, figures = worst_variant(per)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {figures['mean_return']:,.0f} ({worst}) |")
    return "\n".join(lines)


def markdown_table(
    results: dict[str, dict[str, float]],
    worst: dict[str, tuple[str, dict[str, float]]] | None = None,
    paired_with: str | None = None,
) -> str:
    """A Markdown table of `evaluate_policies` results, best mean return first; with `worst`
    (`worst_variant` of each policy's `evaluate_variants` results), a column of each policy's
    mean return on its worst plausible model; with `paired_with` (as given to
    `evaluate_policies`), a column of each policy's paired difference to that one."""
    head = (
        "| policy | mean return ± 95% CI | challenge score: last 100 (mean) | failure rate | repairs | life (flights)"
    )
    head += " | worst plausible model |" if worst else " |"
    head += f" − {paired_with}, paired |" if paired_with else ""
    lines = [
        head + " episodes |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (bool(worst) + bool(paired_with)) + "---:|",
    ]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["mean_return"]):
        score = f"{r['score_total']:,.0f} ({r['score_mean']:,.0f})" if "score_total" in r else "–"
        row = (
            f"| {name} | {r['mean_return']:,.0f} ± {r['ci95']:,.0f} | {score} | "
            f"{100 * r['failure_rate']:.1f}% | {r['mean_repairs']:.2f} | {r['mean_life']:.0f} |"
        )
        if worst:
            variant, figures = worst[name]
            row += f" {figures['mean_return']:,.0f} ({variant}) |"
        if paired_with:
            row += " – |" if name == paired_with else f" {r['paired_diff']:+,.0f} ± {r['paired_ci95']:,.0f} |"
        lines.append(row + f" {r['episodes']} |")
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

    env = make_env(num_envs=1, seed=seed, privileged=True, autoreset_mode="disabled", **env_kwargs)
    if env.history < env.step_size:
        raise ValueError(f"record_episode needs history >= step_size to see every row, got {env.history}")
    td = env.reset()
    rows, health, flights, actions, action_flights = [], [], [], [], []
    k = 1  # the reset row
    for _ in range(max_env_steps + 1):
        # the rows this call added are the newest k of the window (a window holds a step's rows)
        new = slice(env.history - k, None)
        rows.append(td["observation"][0, new])
        health.append(td["window_health"][0, new])
        flights.append(td["flight"][0, new])
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


MODEL_CONFIG_KEYS = ("max_flights", "player_keys", "belief_inputs", "plan_inputs", "step_size", "cnn_rows")


def actor_critic_config(config: dict) -> dict:
    """The `ActorCritic` arguments in a checkpoint's `model` entry: only the known keys, as plain
    values (a checkpoint names a configuration, never code); `history` is the env's, not the model's."""
    return {k: v for k, v in config.items() if k in MODEL_CONFIG_KEYS}


def load_policy(spec: str, device: torch.device, seed: int) -> tuple[str, Policy, int | None]:
    """(name, policy, history): a baseline by name, or the greedy policy of a training checkpoint
    and the window it was trained with (None: a baseline, or the env's default)."""
    from torch_student_env.models import ActorCritic, QNetwork
    from torch_student_env.policies import BASELINES, make_policy

    if spec in BASELINES:
        return spec, make_policy(spec, seed=seed, device=device), None
    from pathlib import Path

    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--policy {spec!r} is neither a baseline {BASELINES} nor a checkpoint file")
    ckpt = torch.load(path, map_location=device, weights_only=True)  # never runs a checkpoint's code
    config = actor_critic_config(ckpt.get("model", {}))
    if "agent" in ckpt:
        model = ActorCritic(**config)
        model.load_state_dict(ckpt["agent"])
    elif "q_net" in ckpt:
        model = QNetwork(**{k: v for k, v in config.items() if k in ("max_flights", "player_keys")})
        model.load_state_dict(ckpt["q_net"])
    else:
        raise SystemExit(f"{spec}: not a checkpoint of examples/ppo_cnn.py or examples/dqn_cnn.py")
    model.to(device).eval()
    history = ckpt.get("model", {}).get("history")
    history = history if isinstance(history, int) else None
    return f"{path.parent.name or path.stem} ({ckpt.get('global_step', '?'):,} steps)", model.act, history


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate baselines and checkpoints on held-out seeds, print a Markdown table."""
    import argparse
    from pathlib import Path

    from torch_student_env.config import normalize_device
    from torch_student_env.policies import BASELINES

    parser = argparse.ArgumentParser(
        prog="python -m torch_student_env.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", action="append", help="baseline name or checkpoint path (repeatable)")
    parser.add_argument("--episodes", type=int, default=1024, help="episodes per policy (one per env)")
    parser.add_argument("--seed", type=int, default=10_000, help="held-out seed (training uses others)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--variants", help="score on each model of this ensemble (sim.variants), e.g. plausible")
    parser.add_argument(
        "--history",
        type=int,
        help="rows in each env's window for every policy (default: the window the checkpoints trained with)",
    )
    parser.add_argument(
        "--paired-with", help="a baseline among the policies: add each one's paired difference to it (e.g. belief)"
    )
    args = parser.parse_args(argv)
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    specs = args.policy or BASELINES
    if args.paired_with is not None and args.paired_with not in [s for s in specs if s in BASELINES]:
        parser.error(f"--paired-with {args.paired_with!r} is not a baseline among the policies {list(specs)}")
    if args.paired_with is not None and args.variants:
        parser.error("--paired-with applies to the single-model table, not to --variants")
    loaded = {spec: load_policy(spec, device, args.seed) for spec in specs if spec not in BASELINES}
    trained = {history for _, _, history in loaded.values() if history is not None}
    if args.history is None and len(trained) > 1:
        parser.error(f"the checkpoints trained with windows {sorted(trained)}: choose one with --history")
    history = args.history if args.history is not None else next(iter(trained), None)
    window = f", windows of {history} rows" if history is not None else ""
    if args.variants:
        from torch_student_env.policies import make_policy
        from torch_student_env.sim.variants import resolve

        try:
            variants = resolve(args.variants)
        except ValueError as err:
            parser.error(str(err))
        factories = {}
        for spec in specs:
            if spec in BASELINES:  # only the oracle knows the hidden state, and so which model runs
                factories[spec] = lambda params, spec=spec: make_policy(
                    spec, seed=args.seed, device=device, params=params if spec == "oracle" else None
                )
            else:
                name, policy, _ = loaded[spec]
                factories[name] = lambda params, policy=policy: policy
        results = evaluate_variants(
            factories, variants, num_envs=args.episodes, seed=args.seed, device=device, history=history
        )
        table = f"{args.episodes} episodes per policy and variant, seed {args.seed}{window}: "
        table += "mean return ± 95% CI (failure rate)\n\n" + markdown_variant_table(results)
    else:
        policies = dict(
            (loaded[spec] if spec in loaded else load_policy(spec, device, args.seed))[:2] for spec in specs
        )
        results = evaluate_policies(
            policies,
            num_envs=args.episodes,
            seed=args.seed,
            device=device,
            progress=True,
            paired_with=args.paired_with,
            history=history,
        )
        table = f"{args.episodes} episodes per policy, seed {args.seed}{window}\n\n"
        table += markdown_table(results, paired_with=args.paired_with)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""`python -m torch_student_env.fidelity LOG [LOG ...]`: replay real episodes, one fidelity table per policy.

Each log's episodes are grouped by the policy that played them (`agent_name`, else the file's
name); each policy's episodes are replayed under their own actions and compared with the real
ones. `--variant NAME` replays on a plausible-model variant (`sim.variants`) instead of the
default model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from torch_student_env.fidelity.compare import Check, compare, summarize
from torch_student_env.fidelity.data import LoggedEpisode, load_episodes
from torch_student_env.fidelity.replay import continuations, replay, schedule
from torch_student_env.sim.params import SimParams

# The 250-flight engine of the challenge's single-trajectory notebook: repairs at flights 50, 100,
# 150 and 200, a sale at 250; its real total.
SINGLE_ENGINE_SCHEDULE = schedule(repair_every=50, sell_at=250)
SINGLE_ENGINE_TOTAL = 4425.09
# Steps a simulated engine may fly past the longest logged episode of its policy: enough for
# every replay of a failed episode to fail too (a policy's rule is 60 flights a cycle at most).
EXTRA_STEPS = 60


def by_policy(episodes: list[LoggedEpisode]) -> dict[str, list[LoggedEpisode]]:
    """Episodes grouped by the policy that played them, in order of first appearance."""
    groups: dict[str, list[LoggedEpisode]] = {}
    for ep in episodes:
        groups.setdefault(ep.agent, []).append(ep)
    return groups


def replay_policy(
    episodes: list[LoggedEpisode], seeds: int, seed: int, params: SimParams | None = None
) -> list[LoggedEpisode]:
    """Every episode's actions, continued by the policy's own rule (`continuations`), on `seeds` engines."""
    actions = continuations([ep.actions for ep in episodes], extra_steps=EXTRA_STEPS)
    runs = replay(actions, seeds=seeds, seed=seed, params=params, extra_steps=EXTRA_STEPS, agent=episodes[0].agent)
    return [run for per_list in runs for run in per_list]


def policy_table(name: str, real: dict, checks: list[Check], seconds: float) -> list[str]:
    """One policy's Markdown section: its size, the table, the count of targets met."""
    missed = sum(c.passed is False for c in checks)
    return [
        f"### {name}: {real['episodes']} logged episodes ({seconds:.0f} s)",
        "",
        "| group | figure | real | simulated | target | met |",
        "|---|---|---|---|---|---|",
        *(c.row() for c in checks),
        "",
        f"{sum(c.passed is True for c in checks)} targets met, {missed} missed.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch_student_env.fidelity", description=__doc__)
    parser.add_argument("logs", type=Path, nargs="+", help="episode logs (JSON Lines), e.g. exploration_episodes.jsonl")
    parser.add_argument("--seeds", type=int, default=8, help="simulated engines per logged episode")
    parser.add_argument("--seed", type=int, default=0, help="root seed of the simulated engines")
    parser.add_argument("--variant", default=None, help="replay on this plausible-model variant (sim.variants)")
    parser.add_argument("--png", type=Path, default=None, help="write the overlay figure here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables here too")
    parser.add_argument("--write-targets", type=Path, default=None, help="write the real summaries (JSON) here")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 256:
        parser.error(f"--seeds must be in [1, 256], got {args.seeds}")
    params = None
    if args.variant is not None:
        from torch_student_env.sim.variants import PLAUSIBLE

        if args.variant not in PLAUSIBLE:
            parser.error(f"--variant must be one of {sorted(PLAUSIBLE)}, got {args.variant!r}")
        params = PLAUSIBLE[args.variant]

    episodes = [ep for path in args.logs for ep in load_episodes(path)]
    lines, summaries, missed = [], {}, 0
    for name, group in by_policy(episodes).items():
        start = time.perf_counter()
        real, sim = summarize(group), summarize(replay_policy(group, args.seeds, args.seed, params))
        checks = compare(real, sim)
        summaries[name] = (real, sim)
        missed += sum(c.passed is False for c in checks)
        lines += policy_table(name, real, checks, time.perf_counter() - start)

    totals = [ep.total for ep in replay([SINGLE_ENGINE_SCHEDULE], seeds=64, seed=args.seed, params=params)[0]]
    low, high = np.percentile(totals, [5, 95])
    inside = low <= SINGLE_ENGINE_TOTAL <= high
    lines.append(
        f"250-flight engine (repair at 50/100/150/200, sell at 250): real {SINGLE_ENGINE_TOTAL:,.0f}, "
        f"simulated {np.mean(totals):,.0f} ± {np.std(totals):.0f} over 64 seeds (5-95 %: {low:,.0f}-{high:,.0f}): "
        + ("within" if inside else "**outside**")
    )
    missed += not inside
    model = f"variant {args.variant!r}" if args.variant else "the default model"
    header = f"Replay of {len(episodes)} logged episodes × {args.seeds} seeds on {model}. Targets: docs/simulator.md."
    lines = [header, "", *lines, "", f"All policies: {missed} targets missed."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.write_targets:
        real_only = {name: real for name, (real, _) in summaries.items()}
        args.write_targets.write_text(json.dumps(real_only, indent=1) + "\n")
    if args.png:
        from torch_student_env.fidelity.figure import draw

        draw(summaries, totals, SINGLE_ENGINE_TOTAL).savefig(args.png, dpi=110)
        print(f"figure: {args.png}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

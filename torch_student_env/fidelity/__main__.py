"""`python -m torch_student_env.fidelity EPISODES.jsonl`: replay real episodes, print the fidelity table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from torch_student_env.fidelity.compare import compare, summarize
from torch_student_env.fidelity.data import load_episodes
from torch_student_env.fidelity.replay import continuations, replay, schedule

# The 250-flight engine of the challenge's single-trajectory notebook: repairs at flights 50, 100,
# 150 and 200, a sale at 250; its real total.
SINGLE_ENGINE_SCHEDULE = schedule(repair_every=50, sell_at=250)
SINGLE_ENGINE_TOTAL = 4425.09


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torch_student_env.fidelity", description=__doc__)
    parser.add_argument("episodes", type=Path, help="episode log (JSON Lines), e.g. exploration_episodes.jsonl")
    parser.add_argument("--seeds", type=int, default=8, help="simulated engines per logged episode")
    parser.add_argument("--seed", type=int, default=0, help="root seed of the simulated engines")
    parser.add_argument("--png", type=Path, default=None, help="write the overlay figure here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    parser.add_argument("--write-targets", type=Path, default=None, help="write the real summary (JSON) here")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= 256:
        parser.error(f"--seeds must be in [1, 256], got {args.seeds}")

    start = time.perf_counter()
    real_episodes = load_episodes(args.episodes)
    replays = replay(continuations([ep.actions for ep in real_episodes]), seeds=args.seeds, seed=args.seed)
    real = summarize(real_episodes)
    sim = summarize([run for runs in replays for run in runs])
    checks = compare(real, sim)

    totals = [ep.total for ep in replay([SINGLE_ENGINE_SCHEDULE], seeds=64, seed=args.seed)[0]]
    low, high = np.percentile(totals, [5, 95])
    single = (
        f"250-flight engine (repair at 50/100/150/200, sell at 250): real {SINGLE_ENGINE_TOTAL:,.0f}, "
        f"simulated {np.mean(totals):,.0f} ± {np.std(totals):.0f} over 64 seeds (5-95 %: {low:,.0f}-{high:,.0f}): "
        + ("within" if low <= SINGLE_ENGINE_TOTAL <= high else "**outside**")
    )
    lines = [
        f"Replay of {len(real_episodes)} logged episodes × {args.seeds} seeds "
        f"({time.perf_counter() - start:.0f} s). Targets: docs/simulator.md.",
        "",
        "| group | figure | real | simulated | target | met |",
        "|---|---|---|---|---|---|",
        *(c.row() for c in checks),
        "",
        single,
    ]
    failed = [c for c in checks if c.passed is False] + ([] if low <= SINGLE_ENGINE_TOTAL <= high else ["single"])
    lines.append(f"\n{sum(c.passed is True for c in checks)} targets met, {len(failed)} missed.")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.write_targets:
        args.write_targets.write_text(json.dumps(real, indent=1) + "\n")
    if args.png:
        from torch_student_env.fidelity.figure import draw

        draw(real, sim, totals, SINGLE_ENGINE_TOTAL).savefig(args.png, dpi=110)
        print(f"figure: {args.png}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

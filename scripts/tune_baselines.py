"""Tune the rule-based baselines by grid search on training seeds (never the evaluation seeds).

    python scripts/tune_baselines.py [--num-envs 2048] [--seed 1]

prints each grid point's mean return and the best setting per policy; `make_policy`'s defaults
are its output (docs/simulator.md, "Baselines").
"""

from __future__ import annotations

import argparse
import itertools

from torch_student_env import make_env
from torch_student_env.evaluation import run_episodes, summarize
from torch_student_env.policies import ThresholdPolicy, TimeBasedPolicy

GRIDS = {
    "time_based": (
        TimeBasedPolicy,
        {"repair_every": (30, 40, 50, 60, 70, 80), "sell_at": (150, 200, 250, 280, 300, 320, 350, 400)},
    ),
    "threshold": (
        ThresholdPolicy,
        {
            "repair_below": (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55),
            "sell_after": (200, 250, 280, 300, 320, 350, 400, 500),
        },
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1, help="training seed (evaluation uses 10,000 and up)")
    args = parser.parse_args()
    for name, (cls, grid) in GRIDS.items():
        results = []
        for values in itertools.product(*grid.values()):
            kwargs = dict(zip(grid, values, strict=True))
            env = make_env(num_envs=args.num_envs, seed=args.seed)
            r = summarize(run_episodes(env, cls(**kwargs), 1))
            results.append((r["mean_return"], kwargs, r))
        results.sort(key=lambda x: x[0])
        for mean, kwargs, r in results[-5:]:
            print(
                f"{name:10s} {kwargs}  mean {mean:7.0f} ± {r['ci95']:3.0f}  failures {r['failure_rate']:.1%}  "
                f"repairs {r['mean_repairs']:.2f}  life {r['mean_life']:.0f}"
            )
        print(f"best {name}: {results[-1][1]}\n")


if __name__ == "__main__":
    main()

"""Does planning under the estimate's uncertainty beat the belief policy's point estimate?

    python scripts/belief_uncertainty.py [--history 100] [--seed 5000] [--episodes 1024] [--widen 1 3]

`BeliefPolicy` plays the oracle's plan at a point estimate of (health, wear rate): certainty
equivalence. `QmdpPolicy` instead averages the plan's action values over the estimate's
posterior (Gauss-Hermite points of the wear rate), QMDP (Littman, Cassandra
and Kaelbling 1995), and takes the best average. `--widen` scales that posterior's spread, to
see whether any amount of caution pays. Prints each policy's mean return and its paired
difference to `belief` on the same engines. Runs on the validation seed by default, never the
held-out one.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tensordict import TensorDict

from torch_student_env import make_env
from torch_student_env.evaluation import paired_difference, run_episodes, summarize
from torch_student_env.oracle import plan_index, plan_values
from torch_student_env.policies import estimate_state, make_policy
from torch_student_env.sim.engine import SimTables
from torch_student_env.sim.params import SimParams


class QmdpPolicy:
    """The action maximising the plan's value averaged over the wear rate's posterior."""

    def __init__(self, params: SimParams, step_size: int = 10, max_flights: int = 1000, widen: float = 1.0) -> None:
        self.params, self.step_size = params, step_size
        self.values = plan_values(params, step_size, max_flights)  # (T + 1, 3, C, S, F)
        self.tables = SimTables(params, torch.device("cpu"))
        points, weights = np.polynomial.hermite_e.hermegauss(7)  # nodes for a standard normal
        self.points = torch.tensor(points, dtype=torch.float32).view(-1, 1) * widen
        self.weights = torch.tensor(weights / weights.sum(), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        _, rate, rate_std = estimate_state(td, self.params, self.tables, with_spread=True)
        rates = (rate + self.points * rate_std).clamp(min=1e-4)  # (K, N)
        steps, classes = self.values.shape[0] - 1, self.values.shape[2]
        t, c, s, f = plan_index(
            td["age"], td["repairs"], td["since_repair"], rates, self.step_size, steps, classes, self.tables
        )
        q = self.values[t.expand_as(f), :, c.expand_as(f), s.expand_as(f), f]  # (K, N, 3)
        return (q * self.weights).sum(0).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=100, help="rows in each env's window (default: 100)")
    parser.add_argument("--seed", type=int, default=5_000, help="episode seed (default: the validation seed)")
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--widen", type=float, nargs="+", default=[1.0, 3.0], help="posterior spread scales")
    args = parser.parse_args()
    params = SimParams()

    def run(policy):
        env = make_env(num_envs=args.episodes, seed=args.seed, history=args.history)
        return run_episodes(env, policy)

    belief = run(make_policy("belief", params=params))
    print(f"{args.episodes} episodes, seed {args.seed}, windows of {args.history} rows\n")
    print("| policy | mean return ± 95% CI | failure rate | − belief, paired |\n|---|---:|---:|---:|")
    figures = summarize(belief)
    mean, failures = f"{figures['mean_return']:,.1f} ± {figures['ci95']:,.0f}", 100 * figures["failure_rate"]
    print(f"| belief | {mean} | {failures:.1f}% | – |")
    for widen in args.widen:
        episodes = run(QmdpPolicy(params, widen=widen))
        figures, paired = summarize(episodes), paired_difference(episodes.returns, belief.returns)
        print(
            f"| QMDP, spread × {widen:g} | {figures['mean_return']:,.1f} ± {figures['ci95']:,.0f} | "
            f"{100 * figures['failure_rate']:.1f}% | {paired['paired_diff']:+,.1f} ± {paired['paired_ci95']:,.1f} |"
        )


if __name__ == "__main__":
    main()

"""The learning curve's points: the greedy policy on the validation engines, paired with `belief`."""

from __future__ import annotations

import torch

from torch_student_env.evaluation import Episodes, paired_difference, run_episodes, summarize
from torch_student_env.make import make_env
from torch_student_env.policies import BASELINES, make_policy

VALIDATION_SEED = 5_000  # the learning curve's engines; the final table's are held out (10,000, 123)


class Validator:
    """The learning curve's points: the greedy policy on fixed engines (seed 5,000, one episode
    each), and its difference to `belief` on the same engines, episode by episode. Paired, the
    engines' luck cancels: late in the main job's training the difference's CI is ± 25 where the
    return's is ± 90 (256 engines), so the learning curve's zoomed panel can show where the policy
    stands between the best rule and the oracle.
    `belief`, the oracle and the rules are played once, at construction (a few seconds)."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", history: int | None = None) -> None:
        self.env_kwargs = {"num_envs": num_envs, "seed": VALIDATION_SEED, "device": device, "fast": False}
        if history is not None:
            self.env_kwargs["history"] = history
        names = ["belief", "oracle", *(name for name in BASELINES if BASELINES[name].rule)]
        policies = {name: make_policy(name, seed=VALIDATION_SEED, device=device) for name in names}
        self.returns = {name: self.play(policy).returns for name, policy in policies.items()}

    def play(self, policy) -> Episodes:
        """`policy`'s episodes on the validation engines (eager: one episode each is not worth a
        compile)."""
        return run_episodes(make_env(privileged=True, **self.env_kwargs), policy)

    def references(self) -> dict[str, float]:
        """Each baseline's mean return less `belief`'s on the validation engines (belief: 0)."""
        belief = self.returns["belief"].double()
        return {name: (returns.double() - belief).mean().item() for name, returns in self.returns.items()}

    def __call__(self, policy, env_steps: int) -> dict[str, float]:
        """One point of the curve: env steps, mean return ± 95 % CI, and `paired_diff` ±
        `paired_ci95` to `belief`."""
        episodes = self.play(policy)
        stats = summarize(episodes)
        point = {"env_steps": env_steps, "mean_return": stats["mean_return"], "ci95": stats["ci95"]}
        return point | paired_difference(episodes.returns, self.returns["belief"])

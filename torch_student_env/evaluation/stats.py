"""Statistics of finished episodes: the mean return with its CI, a paired difference, the
challenge's score of a stream, and a policy's worst model."""

from __future__ import annotations

import math

import torch

from torch_student_env.evaluation.episodes import Episodes
from torch_student_env.leaderboard import SCORE_WINDOW, score_metrics


def challenge_score(stream: Episodes, last: int = SCORE_WINDOW) -> dict[str, float]:
    """The challenge's leaderboard figures over the last `last` episodes of a stream, as the
    server's leaderboard computes them (`leaderboard.score_metrics`, the one owner of the rule)."""
    metrics = score_metrics(stream.records(), last)
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


def worst_variant(per_variant: dict[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The variant on which a policy's mean return is lowest, and its figures there."""
    return min(per_variant.items(), key=lambda kv: kv[1]["mean_return"])

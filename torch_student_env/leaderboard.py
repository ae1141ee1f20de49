"""The challenge's leaderboard metrics, computed from finished episodes (server and compat share it).

The challenge ranks a user by the **total reward of their last 100 finished episodes**, in the
order they finished: a stream of episodes played one after another, not a parallel batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# The challenge's score window: a user is ranked by their last this many finished episodes.
SCORE_WINDOW = 100


@dataclass(frozen=True)
class FinishedEpisode:
    """What the leaderboard keeps of one episode."""

    total_reward: float
    repairs: int
    flights: int
    failed: bool
    finished_at: str  # ISO 8601, UTC

    @classmethod
    def now(cls, total_reward: float, repairs: int, flights: int, failed: bool) -> FinishedEpisode:
        """An episode that finished just now."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(float(total_reward), int(repairs), int(flights), bool(failed), stamp)


def score_metrics(episodes: list[FinishedEpisode], limit: int = SCORE_WINDOW) -> dict[str, Any]:
    """The metrics of the last `limit` episodes, under the keys the challenge's client reads.

    `total_reward` is the ranking figure; `avg_steps` is the mean episode length in flights (the
    server's step counter); `total_maintenance` counts repairs. Empty without any episode.
    """
    last = episodes[-limit:]
    if not last:
        return {}
    returns = [e.total_reward for e in last]
    return {
        "total_episodes": len(last),
        "total_reward": sum(returns),
        "avg_reward": sum(returns) / len(last),
        "best_reward": max(returns),
        "total_maintenance": sum(e.repairs for e in last),
        "avg_steps": sum(e.flights for e in last) / len(last),
        "failure_rate": sum(e.failed for e in last) / len(last),
        "last_episode_date": last[-1].finished_at,
    }


def as_client_entry(user_token: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """The entry `student_client.get_leaderboard_score` returns for these metrics."""
    return {
        "user_token": user_token,
        "total_episodes": metrics.get("total_episodes", 0),
        "total_reward": metrics.get("total_reward", 0.0),
        "avg_reward": metrics.get("avg_reward", 0.0),
        "best_reward": metrics.get("best_reward", 0.0),
        "maintenance_actions": metrics.get("total_maintenance", 0),
        "avg_episode_length": metrics.get("avg_steps", 0.0),
        "failure_rate": metrics.get("failure_rate", 0.0),
        "last_episode_date": metrics.get("last_episode_date"),
    }


__all__ = ["FinishedEpisode", "as_client_entry", "score_metrics"]

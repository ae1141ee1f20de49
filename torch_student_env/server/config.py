"""The reference server's settings: what one request and one token may use (`Limits`), within
the absolute maxima that the request bodies themselves bound (`server.models`)."""

from __future__ import annotations

from dataclasses import dataclass, fields

# The seed client's defaults (`spec`) are what a body left incomplete takes, within a server's limits.
from torch_student_env.spec import CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE, EPISODES_KEPT_PER_TOKEN, MAX_STEP_SIZE

# The most any server accepts, whatever its `Limits`: the request bodies are validated against
# these before a handler runs (and before any integer reaches a tensor), and a server's own
# limits, at most these, are enforced by `ServerState` with a message naming the limit.
ABSOLUTE_MAX = {
    "max_envs_per_request": 1 << 16,
    "max_step_size": MAX_STEP_SIZE,
    "max_steps_per_episode": 1 << 30,
    "scored_episodes_per_token": 100_000,
}


@dataclass
class Limits:
    """What one request and one token may use; every limit answers a clear 4xx, never a 500.

    Memory is bounded per token (`max_envs_per_token` engines, `max_sessions_per_token`
    sessions, `scored_episodes_per_token` records) and work per request (`max_envs_per_request`
    episodes of at most `max_step_size` flights each).
    """

    max_envs_per_request: int = 1024
    max_envs_per_session: int = 4096
    max_envs_per_token: int = 4096
    max_sessions_per_token: int = 16
    max_step_size: int = MAX_STEP_SIZE
    max_body_bytes: int = 1 << 20
    session_ttl_s: float = 3600.0
    max_steps_per_episode: int = 100_000
    scored_episodes_per_token: int = EPISODES_KEPT_PER_TOKEN  # finished episodes kept for the leaderboard

    @property
    def default_steps_per_episode(self) -> int:
        """The flights of an episode whose client left them out: the client's 1,000, within the limit."""
        return min(CLIENT_STEPS_PER_EPISODE, self.max_steps_per_episode)

    @property
    def default_step_size(self) -> int:
        """The flights of a step whose client left them out: the client's 10, within the limit."""
        return min(CLIENT_STEP_SIZE, self.max_step_size)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{f.name} must be a positive number, got {value!r}")
            top = ABSOLUTE_MAX.get(f.name)
            if top is not None and value > top:
                raise ValueError(f"Limits.{f.name} must be at most {top}, got {value}")

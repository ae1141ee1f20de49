"""The reference server's settings: what one request and one token may use (`Limits`), within
the absolute maxima that the request bodies themselves bound (`server.models`); which tokens it
accepts and the names the leaderboard shows for them (`load_tokens`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

# The seed client's defaults (`spec`) are what a body left incomplete takes, within a server's limits.
from torch_student_env.spec import (
    CLIENT_STEP_SIZE,
    CLIENT_STEPS_PER_EPISODE,
    DEFAULT_TOKEN,
    EPISODES_KEPT_PER_TOKEN,
    MAX_STEP_SIZE,
)

log = logging.getLogger("torch_student_env.server")

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


def load_tokens(tokens_file: str | Path | None = None) -> dict[str, str]:
    """Tokens and their display names on the leaderboard page.

    From a file (one `token [display name]` per line, # comments) or STUDENT_ENV_TOKENS
    (comma-separated tokens). With neither, only the seed client's default token `student_user`
    is accepted, with a warning. Tokens without a name are shown as "player K".
    """
    if tokens_file is not None:
        entries = []
        for line in Path(tokens_file).read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                token, _, name = line.strip().partition(" ")
                entries.append((token, name.strip()))
        if not entries:
            raise ValueError(f"{tokens_file} holds no token")
        return display_names(entries)
    env = os.environ.get("STUDENT_ENV_TOKENS", "")
    tokens = [(t.strip(), "") for t in env.split(",") if t.strip()]
    if not tokens:
        log.warning("no tokens configured: accepting only the default token %r", DEFAULT_TOKEN)
        tokens = [(DEFAULT_TOKEN, "")]
    return display_names(tokens)


def display_names(entries: list[tuple[str, str]] | set[str] | dict[str, str]) -> dict[str, str]:
    """token -> display name; unnamed tokens become "player K" (K by sorted token, never the token)."""
    if isinstance(entries, dict):
        entries = list(entries.items())
    elif isinstance(entries, set):
        entries = [(token, "") for token in sorted(entries)]
    return {token: name or f"player {k + 1}" for k, (token, name) in enumerate(entries)}

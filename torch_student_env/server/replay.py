"""Exactly-once steps and resets: a client may number its requests per episode, and a repeated
number gets the stored answer instead of a second step (a retry after a lost response)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch_student_env.server.errors import ServerError


@dataclass
class Replay:
    """One episode's protocol bookkeeping, nothing of the episode itself: whether a client reset
    it yet, and its counters and stored answers for exactly-once replay."""

    episode_id: str
    has_reset: bool = False  # the protocol asks a client to reset an episode before stepping it
    step_counter: int = 0
    reset_counter: int = 0
    last_step: dict | None = None  # the answer to replay for a repeated step_counter
    last_reset: tuple | None = None  # the answer to replay for a repeated reset_counter

    def replayed_step(self, counter: int | None, request: list) -> dict | None:
        """The stored answer of a repeated `step_counter`, None for the next one (or none); else 409."""
        return _replayed("step", self.episode_id, counter, self.step_counter, self.last_step, request)

    def replayed_reset(self, counter: int | None) -> tuple | None:
        """The stored answer of a repeated `reset_counter`, None for the next one (or none); else 409."""
        return _replayed("reset", self.episode_id, counter, self.reset_counter, self.last_reset)

    def record_step(self, counter: int | None, request: list, answer: dict) -> None:
        """Keep a numbered step's answer for its retries."""
        if counter is not None:
            self.step_counter, self.last_step = counter, answer | {"request": request}

    def record_reset(self, counter: int | None, answer: tuple) -> None:
        """Keep a reset's answer: a numbered one under its number, an unnumbered one (a step's
        `reset_if_done`) as the next number."""
        self.reset_counter = self.reset_counter + 1 if counter is None else counter
        self.last_reset = answer


def _replayed(kind: str, episode_id: str, counter: int | None, last: int, stored: Any, request: Any = None) -> Any:
    """The stored answer for a repeated counter, None for the next one (or no counter); else 409.

    A repeated counter must repeat the request too (`request`, compared with the stored one):
    a retry with other actions is a client bug, not a retry, and gets 409.
    """
    if counter is None:
        return None
    if counter == last and stored is not None:
        if request is not None and stored.get("request") != request:
            raise ServerError(409, f"episode {episode_id}: {kind}_counter {counter} repeated with a different request")
        return stored
    if counter != last + 1:
        raise ServerError(409, f"episode {episode_id}: {kind}_counter {counter}, expected {last + 1}")
    return None

"""Sessions and the registry of episodes: who holds what, expiry, and the locks of groups.

The registry lock guards the maps of sessions and episodes and is only held for lookups;
simulation runs under the locks of the groups a request touches (`holding`, taken in a fixed
order), so one token's long step never stalls another token's requests, nor the same token's
other groups.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from torch_student_env.server.config import Limits
from torch_student_env.server.errors import ServerError
from torch_student_env.server.groups import Group


@dataclass
class Session:
    """A token's container of groups; released by DELETE, by its TTL, or as its token's oldest."""

    session_id: str
    token: str
    last_used: float
    groups: dict[str, Group] = field(default_factory=dict)
    envs: int = 0


class Registry:
    """Every session of every token and where each episode lives; thread-safe."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.episodes: dict[str, tuple[Session, Group, int]] = {}
        self.lock = threading.Lock()  # never held while simulating

    def create_session(self, token: str) -> str:
        """A new session; past the token's limit, its least recently used session is released.

        The challenge's client never releases a session (its `close()` only closes the
        connection), so a script that opens an env per episode would otherwise hit the limit
        after a few episodes. The limit bounds what a token holds, and never refuses new work.
        """
        with self.lock:
            self._expire()
            owned = sorted((s for s in self.sessions.values() if s.token == token), key=lambda s: s.last_used)
            for stale in owned[: max(0, len(owned) - self.limits.max_sessions_per_token + 1)]:
                self._drop(stale.session_id)
            session = Session(secrets.token_hex(8), token, time.monotonic())
            self.sessions[session.session_id] = session
            return session.session_id

    def close_session(self, token: str, session_id: str) -> None:
        """Release a session, its groups and their episodes (404 for another token's session)."""
        with self.lock:
            self._expire()
            session = self.sessions.get(session_id)
            if session is None or session.token != token:
                raise ServerError(404, f"session {session_id!r} not found")
            self._drop(session_id)

    def reserve(self, token: str, session_id: str | None, num_envs: int) -> Session:
        """Count `num_envs` new engines against the session and the token (409 past a limit),
        before they are allocated, so that concurrent creates cannot both pass."""
        limits = self.limits
        with self.lock:
            session = self._session(token, session_id)
            if session.envs + num_envs > limits.max_envs_per_session:
                raise ServerError(
                    409, f"session would hold {session.envs + num_envs} envs (limit {limits.max_envs_per_session})"
                )
            held = sum(s.envs for s in self.sessions.values() if s.token == token)
            if held + num_envs > limits.max_envs_per_token:
                raise ServerError(
                    409,
                    f"this token would hold {held + num_envs} envs (limit {limits.max_envs_per_token}): "
                    "release a session with DELETE /api/v1/session/{session_id}",
                )
            session.envs += num_envs
            return session

    def unreserve(self, session: Session, num_envs: int) -> None:
        """Give back a reservation whose group could not be built."""
        with self.lock:
            session.envs -= num_envs

    def add(self, session: Session, group: Group) -> None:
        """Register a built group and its episodes in its session."""
        with self.lock:
            session.groups[group.group_id] = group
            for i, replay in enumerate(group.replays):
                self.episodes[replay.episode_id] = (session, group, i)

    def locate(self, token: str, episode_ids: list[str], repeat_status: int = 422) -> list[tuple[Group, int]]:
        """(group, index) of each episode: 404 for any unknown or foreign one; `repeat_status` for
        an episode listed twice (422 where the schema says `uniqueItems`, 409 where it cannot)."""
        if len(episode_ids) > self.limits.max_envs_per_request:
            raise ServerError(
                422, f"{len(episode_ids)} episodes in one request (limit {self.limits.max_envs_per_request})"
            )
        if len(set(episode_ids)) != len(episode_ids):
            repeated = next(e for e in episode_ids if episode_ids.count(e) > 1)
            raise ServerError(repeat_status, f"episode {repeated} appears twice in one request")
        with self.lock:
            self._expire()
            located = []
            for episode_id in episode_ids:
                found = self.episodes.get(episode_id)
                if found is None or found[0].token != token or found[0].session_id not in self.sessions:
                    raise ServerError(404, f"episode {episode_id!r} not found")
                found[0].last_used = time.monotonic()
                located.append((found[1], found[2]))
            return located

    def _session(self, token: str, session_id: str | None) -> Session:
        """The token's session (registry lock held)."""
        self._expire()
        if not session_id:
            raise ServerError(400, "missing Session-ID header: create one with POST /api/v1/session/create")
        session = self.sessions.get(session_id)
        if session is None or session.token != token:  # another token's session does not exist for you
            raise ServerError(404, f"session {session_id!r} not found")
        session.last_used = time.monotonic()
        return session

    def _expire(self) -> None:
        """Drop the sessions idle past their TTL (registry lock held; run on every session lookup)."""
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v.last_used > self.limits.session_ttl_s]:
            self._drop(sid)

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id)
        for group in session.groups.values():
            for episode_id in group.episode_ids:
                self.episodes.pop(episode_id, None)


@contextlib.contextmanager
def holding(groups: Iterable[Group]) -> Iterator[None]:
    """Hold the locks of `groups`, always taken in group-id order so two requests never deadlock."""
    with contextlib.ExitStack() as stack:
        for group in sorted({g.group_id: g for g in groups}.values(), key=lambda g: g.group_id):
            stack.enter_context(group.lock)
        yield

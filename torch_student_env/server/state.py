"""The reference server's state: sessions, vectorized groups and episodes, with no web framework.

Every episode lives in a group. A group is one `LocalBackend` of N engines, made by one
`vectorized/episodes/create` call (a single-episode `episode/create` is a group of one). A
vectorized step runs one batched `advance` per (group, step_size) it touches, with an `active`
mask for the requested engines: a group is never stepped as a loop of single engines.

Exactly-once steps: a request may carry a per-episode `step_counter` (the number of steps the
client has taken on that episode, starting at 1). A repeated counter gets the stored result
without stepping again, so a client can safely retry a step whose response was lost.
`reset_counter` does the same for resets.

Episode ends as on the challenge's server: with the group's `auto_reset` (the client's default),
stepping a finished episode starts the next one in the same call; every finished episode is
recorded for its token's leaderboard score.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from torch_student_env.backends.local import LocalBackend
from torch_student_env.leaderboard import FinishedEpisode, score_metrics
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import NUM_FEATURES


class ServerError(Exception):
    """An error with an HTTP status and a `detail` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Limits:
    """What one token may use; every limit answers a clear 4xx, never a 500."""

    max_envs_per_request: int = 1024
    max_envs_per_session: int = 4096
    max_sessions_per_token: int = 16
    max_step_size: int = 50
    max_body_bytes: int = 1 << 20
    session_ttl_s: float = 3600.0
    max_flights: int = 100_000
    scored_episodes_per_token: int = 1000  # finished episodes kept for the leaderboard


@dataclass
class Group:
    """N engines simulated together, and the bookkeeping the protocol reports per episode."""

    group_id: str
    episode_ids: list[str]
    backend: LocalBackend
    max_flights: int
    auto_reset: bool
    last_row: list[list[float]]
    finished: list[bool]
    terminated: list[bool]
    truncated: list[bool]
    total_reward: list[float]
    flights: list[int]
    step_counter: list[int]
    reset_counter: list[int]
    last_step: list[dict | None]
    last_reset: list[tuple | None]
    has_reset: list[bool]


@dataclass
class Session:
    session_id: str
    token: str
    last_used: float
    groups: dict[str, Group] = field(default_factory=dict)
    envs: int = 0


class ServerState:
    """All sessions of all tokens; one lock makes every request atomic."""

    def __init__(
        self, limits: Limits | None = None, params: SimParams | None = None, expose_health: bool = True
    ) -> None:
        self.limits = limits or Limits()
        self.params = params or SimParams()
        self.expose_health = expose_health
        self.sessions: dict[str, Session] = {}
        self.episodes: dict[str, tuple[Session, Group, int]] = {}
        self.finished: dict[str, deque[FinishedEpisode]] = {}  # token -> its finished episodes, newest last
        self.lock = threading.Lock()

    # -- sessions and episodes ------------------------------------------------------------------
    def create_session(self, token: str) -> str:
        """A new session; past the token's limit, its least recently used session is released.

        The challenge's client never releases a session (its `close()` only closes the
        connection), so a script that opens an env per episode would otherwise hit the limit
        after a few episodes. The limit bounds what a token holds, and never refuses new work.
        """
        self._expire()
        owned = sorted((s for s in self.sessions.values() if s.token == token), key=lambda s: s.last_used)
        for stale in owned[: max(0, len(owned) - self.limits.max_sessions_per_token + 1)]:
            self._drop(stale.session_id)
        session = Session(secrets.token_hex(8), token, time.monotonic())
        self.sessions[session.session_id] = session
        return session.session_id

    def session(self, token: str, session_id: str | None) -> Session:
        self._expire()
        if not session_id:
            raise ServerError(400, "missing Session-ID header: create one with POST /api/v1/session/create")
        session = self.sessions.get(session_id)
        if session is None or session.token != token:  # another token's session does not exist for you
            raise ServerError(404, f"session {session_id!r} not found")
        session.last_used = time.monotonic()
        return session

    def close_session(self, token: str, session_id: str) -> None:
        """Release a session, its groups and their episodes (404 for another token's session)."""
        self._expire()
        session = self.sessions.get(session_id)
        if session is None or session.token != token:
            raise ServerError(404, f"session {session_id!r} not found")
        self._drop(session_id)

    def create_group(self, session: Session, num_envs: int, max_flights: int, auto_reset: bool = True) -> Group:
        if not 1 <= num_envs <= self.limits.max_envs_per_request:
            raise ServerError(422, f"num_envs must be in [1, {self.limits.max_envs_per_request}], got {num_envs}")
        if session.envs + num_envs > self.limits.max_envs_per_session:
            raise ServerError(
                422, f"session would hold {session.envs + num_envs} envs (limit {self.limits.max_envs_per_session})"
            )
        if not 1 <= max_flights <= self.limits.max_flights:
            raise ServerError(
                422, f"max_steps_per_episode must be in [1, {self.limits.max_flights}], got {max_flights}"
            )
        backend = LocalBackend(num_envs, torch.device("cpu"), max_flights, self.params, seed=secrets.randbits(62))
        ids = [secrets.token_hex(8) for _ in range(num_envs)]
        n = num_envs
        group = Group(
            secrets.token_hex(6),
            ids,
            backend,
            max_flights,
            auto_reset,
            [[] for _ in range(n)],
            [True] * n,
            [False] * n,
            [False] * n,
            [0.0] * n,
            [0] * n,
            [0] * n,
            [0] * n,
            [None] * n,
            [None] * n,
            [False] * n,
        )
        session.groups[group.group_id] = group
        session.envs += num_envs
        for i, episode_id in enumerate(ids):
            self.episodes[episode_id] = (session, group, i)
        return group

    def locate(self, token: str, episode_id: str) -> tuple[Group, int]:
        self._expire()
        found = self.episodes.get(episode_id)
        if found is None or found[0].token != token or found[0].session_id not in self.sessions:
            raise ServerError(404, f"episode {episode_id!r} not found")
        found[0].last_used = time.monotonic()
        return found[1], found[2]

    def _expire(self) -> None:
        """Drop the sessions idle past their TTL (run on every request that touches a session)."""
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v.last_used > self.limits.session_ttl_s]:
            self._drop(sid)

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id)
        for group in session.groups.values():
            for episode_id in group.episode_ids:
                self.episodes.pop(episode_id, None)

    # -- leaderboard ----------------------------------------------------------------------------
    def score(self, token: str, limit: int = 100) -> dict[str, Any]:
        """The challenge's leaderboard metrics over the token's last `limit` finished episodes."""
        return score_metrics(list(self.finished.get(token, ())), limit)

    # -- simulation -----------------------------------------------------------------------------
    def reset(
        self,
        token: str,
        episode_ids: list[str],
        seeds: list[int | None],
        env_indices: list[int] | None,
        reset_counters: list[int] | None,
    ) -> tuple[list[list[float]], list[dict]]:
        """Start the next episode of each listed engine; a given seed re-keys it first."""
        located = [self.locate(token, e) for e in episode_ids]
        results: list[tuple[list[float], dict] | None] = [None] * len(located)
        by_group: dict[str, list[int]] = {}
        for j, (group, i) in enumerate(located):
            counter = reset_counters[j] if reset_counters is not None else None
            results[j] = _replay("reset", episode_ids[j], counter, group.reset_counter[i], group.last_reset[i])
            if results[j] is not None:
                continue  # a retried reset: answered, not reset again
            by_group.setdefault(group.group_id, []).append(j)
        for js in by_group.values():
            group = located[js[0]][0]
            seeded = {
                located[j][1]: (seeds[j], env_indices[j] if env_indices is not None else 0)
                for j in js
                if seeds[j] is not None
            }
            restarted = self._restart(group, [located[j][1] for j in js], seeded)
            for j in js:
                i = located[j][1]
                results[j] = restarted[i]
                if reset_counters is not None and reset_counters[j] is not None:
                    group.reset_counter[i] = reset_counters[j]
                    group.last_reset[i] = results[j]
        return [r[0] for r in results], [r[1] for r in results]

    def _restart(
        self, group: Group, engines: list[int], seeded: dict[int, tuple[int, int]] | None = None
    ) -> dict[int, tuple[list[float], dict]]:
        """Start the next episode of `engines` of one group (one batched reset): first row and info each.

        `seeded[i] = (seed, env_index)` re-keys engine i first, as engine `env_index` of `seed`.
        """
        n = len(group.episode_ids)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[engines] = True
        if seeded:
            which = torch.zeros(n, dtype=torch.bool)
            seed_values = torch.zeros(n, dtype=torch.int64)
            index_values = torch.zeros(n, dtype=torch.int64)
            for i, (seed, env_index) in seeded.items():
                which[i], seed_values[i], index_values[i] = True, seed, env_index
            group.backend.seed_engines(which, seed_values, index_values)
        first = group.backend.reset(mask)
        privileged = group.backend.privileged()
        out = {}
        for i in engines:
            group.finished[i] = group.terminated[i] = group.truncated[i] = False
            group.total_reward[i], group.flights[i], group.has_reset[i] = 0.0, 0, True
            group.last_row[i] = first[i, :NUM_FEATURES].tolist()
            info = {"step": 0, "episode_id": group.episode_ids[i], "total_reward": 0.0}
            if self.expose_health:
                info |= _health_info(privileged, i, [float(first[i, NUM_FEATURES])])
            out[i] = (group.last_row[i], info)
        return out

    def step(self, token: str, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Step each listed episode; one batched advance per (group, step_size).

        A finished episode of an `auto_reset` group starts its next episode first (the client
        sends actions for its terminated envs when `auto_reset` is on); otherwise it flies nothing.
        """
        seen: set[str] = set()
        located = []
        for a in actions:
            if a["episode_id"] in seen:
                raise ServerError(422, f"episode {a['episode_id']} appears twice in one vectorized step")
            seen.add(a["episode_id"])
            if not 1 <= a["step_size"] <= self.limits.max_step_size:
                raise ServerError(422, f"step_size must be in [1, {self.limits.max_step_size}], got {a['step_size']}")
            located.append(self.locate(token, a["episode_id"]))
        results: list[dict | None] = [None] * len(actions)
        batches: dict[tuple[str, int], list[int]] = {}
        for j, (a, (group, i)) in enumerate(zip(actions, located, strict=True)):
            request = [a["action"], a["step_size"]]
            results[j] = _replay(
                "step", a["episode_id"], a.get("step_counter"), group.step_counter[i], group.last_step[i], request
            )
            if results[j] is not None:
                continue  # a retried step: the stored answer, no second advance
            if not group.has_reset[i]:
                raise ServerError(409, f"episode {a['episode_id']} has not been reset yet")
            batches.setdefault((group.group_id, a["step_size"]), []).append(j)
        for (_, step_size), js in batches.items():
            group = located[js[0]][0]
            restart = [located[j][1] for j in js if group.finished[located[j][1]] and group.auto_reset]
            if restart:
                self._restart(group, restart)
            n = len(group.episode_ids)
            acts = torch.zeros(n, dtype=torch.int64)
            active = torch.zeros(n, dtype=torch.bool)
            for j in js:
                i = located[j][1]
                acts[i] = actions[j]["action"]
                active[i] = not group.finished[i]
            tr = group.backend.advance(acts, active, step_size)
            privileged = group.backend.privileged()
            n_flown = tr.row_flown.sum(dim=1)
            for j in js:
                i = located[j][1]
                results[j] = self._step_result(token, group, i, bool(active[i]), tr, int(n_flown[i]), privileged)
            # reset_if_done: the step and the next episode's start are one exactly-once unit
            ended = [j for j in js if actions[j].get("reset_if_done") and bool(active[located[j][1]])]
            ended = [j for j in ended if group.finished[located[j][1]]]
            restarted = self._restart(group, [located[j][1] for j in ended]) if ended else {}
            for j in js:
                i = located[j][1]
                if actions[j].get("reset_if_done"):
                    fresh = restarted.get(i) if j in ended else None
                    results[j]["reset"] = None if fresh is None else {"observation": fresh[0], "info": fresh[1]}
                    if fresh is not None:
                        group.reset_counter[i] += 1
                        group.last_reset[i] = fresh
                if actions[j].get("step_counter") is not None:
                    group.step_counter[i] = actions[j]["step_counter"]
                    group.last_step[i] = results[j] | {"request": [actions[j]["action"], actions[j]["step_size"]]}
        return results  # type: ignore[return-value]

    def _step_result(
        self, token: str, group: Group, i: int, active: bool, tr, n_flown: int, privileged
    ) -> dict[str, Any]:
        episode_id = group.episode_ids[i]
        if not active:  # a finished episode of a group without auto_reset: nothing flies until a reset
            return {
                "rows": [],
                "reward": 0.0,
                "terminated": group.terminated[i],
                "truncated": group.truncated[i],
                "info": {
                    "step": group.flights[i],
                    "episode_id": episode_id,
                    "total_reward": group.total_reward[i],
                    "message": "episode finished: reset it to continue",
                },
            }
        reward = float(tr.reward[i])
        terminated, truncated, failed = bool(tr.terminated[i]), bool(tr.truncated[i]), bool(tr.failed[i])
        group.total_reward[i] += reward
        group.flights[i] = int(tr.flights[i])
        group.terminated[i], group.truncated[i] = terminated, truncated
        group.finished[i] = terminated or truncated
        rows = tr.rows[i, :n_flown]
        if n_flown:
            group.last_row[i] = rows[-1, :NUM_FEATURES].tolist()
        info = {
            "step": group.flights[i],
            "episode_id": episode_id,
            "total_reward": group.total_reward[i],
            "failed": failed,
            "repairs": int(tr.repairs[i]),
        }
        if terminated:
            info["reason"] = "failure" if failed else "sold"
        elif truncated:
            info["reason"] = "time limit"
        if group.finished[i]:
            kept = self.finished.setdefault(token, deque(maxlen=self.limits.scored_episodes_per_token))
            kept.append(FinishedEpisode.now(group.total_reward[i], int(tr.repairs[i]), group.flights[i], failed))
        if self.expose_health:
            info |= _health_info(privileged, i, rows[:, NUM_FEATURES].tolist())
        return {
            "rows": rows[:, :NUM_FEATURES].tolist(),
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "info": info,
        }

    def episode_info(self, token: str, episode_id: str) -> dict[str, Any]:
        group, i = self.locate(token, episode_id)
        return {
            "episode_id": episode_id,
            "vectorized_group_id": group.group_id,
            "step": group.flights[i],
            "terminated": group.terminated[i],
            "truncated": group.truncated[i],
            "total_reward": group.total_reward[i],
            "max_steps_per_episode": group.max_flights,
            "step_counter": group.step_counter[i],
            "reset_counter": group.reset_counter[i],
            "observation": group.last_row[i],
        }


def _replay(kind: str, episode_id: str, counter: int | None, last: int, stored: Any, request: Any = None) -> Any:
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


def _health_info(privileged: dict[str, torch.Tensor], i: int, health_rows: list[float]) -> dict[str, Any]:
    """Hidden state, as the challenge server sends it (the client hides it unless prod=False)."""
    health = float(privileged["health"][i])
    return {
        "degradation": 1.0 - health,
        "health": health,
        "wear_rate": float(privileged["wear_rate"][i]),
        "repairs": int(privileged["repairs"][i]),
        "health_rows": health_rows,
    }

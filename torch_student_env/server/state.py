"""The reference server's state: sessions, the registry of episodes, locks, expiry and
exactly-once replay, with no web framework. Episodes themselves are the env's.

Every episode is one engine of a group, and a group is one `TorchStudentEnv` of N engines,
made by one `vectorized/episodes/create` call (a single-episode `episode/create` is a group of
one). The env holds every episode rule: when an episode ends, when it restarts (the group's
`auto_reset` is the env's "next_step" autoreset, the challenge server's rule; without it,
"disabled"), which rows a step flew, the counters. A vectorized step is one partial
`env.step(actions, mask=...)` per (group, step_size) it touches: a group is never stepped as a
loop of single engines. This module only translates: tensors in, the protocol's lists out.

Exactly-once steps: a request may carry a per-episode `step_counter` (the number of steps the
client has taken on that episode, starting at 1). A repeated counter gets the stored answer
without stepping again, so a client can safely retry a step whose response was lost.
`reset_counter` does the same for resets. Every finished episode is recorded for its token's
leaderboard score.

Concurrency: every public method is thread-safe. The registry lock guards the maps of sessions
and episodes and is only held for lookups; simulation runs under the locks of the groups a
request touches (taken in a fixed order), so one token's long step never stalls another
token's requests, nor the same token's other groups.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torch_student_env.env import TorchStudentEnv
from torch_student_env.leaderboard import FinishedEpisode, score_metrics
from torch_student_env.make import make_env
from torch_student_env.server.store import ScoreStore, StoreError
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import MAX_STEP_SIZE, AutoresetMode


class ServerError(Exception):
    """An error with an HTTP status and a `detail` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


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
    scored_episodes_per_token: int = 1000  # finished episodes kept for the leaderboard


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


@dataclass
class Group:
    """N engines as one env, one `Replay` record each, and the lock that guards them."""

    group_id: str
    env: TorchStudentEnv
    max_steps_per_episode: int
    auto_reset: bool
    replays: list[Replay]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def episode_ids(self) -> list[str]:
        return [r.episode_id for r in self.replays]


@dataclass
class Session:
    """A token's container of groups; released by DELETE, by its TTL, or as its token's oldest."""

    session_id: str
    token: str
    last_used: float
    groups: dict[str, Group] = field(default_factory=dict)
    envs: int = 0


class ServerState:
    """All sessions of all tokens, safe to call from many request threads at once."""

    def __init__(
        self,
        limits: Limits | None = None,
        params: SimParams | None = None,
        expose_health: bool = True,
        store: ScoreStore | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.params = params or SimParams()
        self.expose_health = expose_health
        # Finished episodes: committed to the store before the answer that reports them leaves.
        self.store = store if store is not None else ScoreStore(":memory:", self.limits.scored_episodes_per_token)
        self.sessions: dict[str, Session] = {}
        self.episodes: dict[str, tuple[Session, Group, int]] = {}
        self.lock = threading.Lock()  # the registry: sessions and episodes; never held while simulating

    # -- sessions and episodes ------------------------------------------------------------------
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

    def create_group(
        self, token: str, session_id: str | None, num_envs: int, max_steps_per_episode: int, auto_reset: bool = True
    ) -> Group:
        """N new engines in the session; every limit is checked before anything is allocated."""
        limits = self.limits
        if not 1 <= num_envs <= limits.max_envs_per_request:
            raise ServerError(422, f"num_envs must be in [1, {limits.max_envs_per_request}], got {num_envs}")
        if not 1 <= max_steps_per_episode <= limits.max_steps_per_episode:
            raise ServerError(
                422,
                f"max_steps_per_episode must be in [1, {limits.max_steps_per_episode}], got {max_steps_per_episode}",
            )
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
            session.envs += num_envs  # reserved now, so that concurrent creates cannot both pass
        try:
            env = self._make_group_env(num_envs, max_steps_per_episode, auto_reset)
        except BaseException:
            with self.lock:
                session.envs -= num_envs
            raise
        replays = [Replay(secrets.token_hex(8)) for _ in range(num_envs)]
        group = Group(secrets.token_hex(6), env, max_steps_per_episode, auto_reset, replays)
        with self.lock:
            session.groups[group.group_id] = group
            for i, replay in enumerate(replays):
                self.episodes[replay.episode_id] = (session, group, i)
        return group

    def warm_up(self) -> None:
        """Compile (or load) the step of the groups most requests make (the client's default
        flight limit and step size) before serving: a first request would otherwise wait for it.
        Groups with or without auto-reset share that step."""
        env = self._make_group_env(4, 1000, auto_reset=True)
        env.step([0, 0, 0, 0])

    def _make_group_env(self, num_envs: int, max_steps_per_episode: int, auto_reset: bool) -> TorchStudentEnv:
        """The env of a new group: its window holds a whole step's rows (what a step answers)."""
        env = make_env(
            num_envs=num_envs,
            history=min(self.limits.max_step_size, MAX_STEP_SIZE),
            seed=secrets.randbits(62),
            autoreset_mode=AutoresetMode.NEXT_STEP if auto_reset else AutoresetMode.DISABLED,
            privileged=self.expose_health,
            max_steps_per_episode=max_steps_per_episode,
            final_observation=False,
            sim_params=self.params,
        )
        env.reset()  # every engine ready; a client's reset starts the engine's next episode
        return env

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

    def _locate(self, token: str, episode_ids: list[str], repeat_status: int = 422) -> list[tuple[Group, int]]:
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

    @contextlib.contextmanager
    def _holding(self, groups: Iterable[Group]) -> Iterator[None]:
        """Hold the locks of `groups`, always taken in group-id order so two requests never deadlock."""
        with contextlib.ExitStack() as stack:
            for group in sorted({g.group_id: g for g in groups}.values(), key=lambda g: g.group_id):
                stack.enter_context(group.lock)
            yield

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

    # -- leaderboard ----------------------------------------------------------------------------
    def score(self, token: str, limit: int = 100) -> dict[str, Any]:
        """The challenge's leaderboard metrics over the token's last `limit` finished episodes."""
        return score_metrics(self.store.last(token, limit), limit)

    def scored_tokens(self) -> list[str]:
        """The tokens with at least one finished episode."""
        return self.store.tokens()

    # -- simulation -----------------------------------------------------------------------------
    def start_episodes(self, group: Group, engines: list[int]) -> dict[int, tuple[list[float], dict]]:
        """Start the next episode of `engines` of a group the caller does not hold yet."""
        with self._holding([group]):
            return self._restart(group, engines)

    def reset(
        self,
        token: str,
        episode_ids: list[str],
        seeds: list[int | None],
        env_indices: list[int] | None,
        reset_counters: list[int] | None,
    ) -> tuple[list[list[float]], list[dict]]:
        """Start the next episode of each listed engine; a given seed re-keys it first."""
        located = self._locate(token, episode_ids)
        with self._holding(g for g, _ in located):
            results: list[tuple[list[float], dict] | None] = [None] * len(located)
            by_group: dict[str, list[int]] = {}
            for j, (group, i) in enumerate(located):
                replay = group.replays[i]
                counter = reset_counters[j] if reset_counters is not None else None
                results[j] = _replay("reset", episode_ids[j], counter, replay.reset_counter, replay.last_reset)
                if results[j] is None:  # not a retried reset, which is answered without resetting again
                    by_group.setdefault(group.group_id, []).append(j)
            for js in by_group.values():
                group = located[js[0]][0]
                seeded = {
                    located[j][1]: (seeds[j], env_indices[j] if env_indices else 0) for j in js if seeds[j] is not None
                }
                restarted = self._restart(group, [located[j][1] for j in js], seeded)
                for j in js:
                    replay = group.replays[located[j][1]]
                    results[j] = restarted[located[j][1]]
                    if reset_counters is not None and reset_counters[j] is not None:
                        replay.reset_counter, replay.last_reset = reset_counters[j], results[j]
        return [r[0] for r in results], [r[1] for r in results]

    def _restart(
        self, group: Group, engines: list[int], seeded: dict[int, tuple[int, int]] | None = None
    ) -> dict[int, tuple[list[float], dict]]:
        """`env.reset(mask=...)` of `engines` of one held group: first row and info each.

        `seeded[i] = (seed, env_index)` re-keys engine i first (`env.seed_engines`), as engine
        `env_index` of `seed`.
        """
        n = group.env.num_envs
        mask = torch.zeros(n, dtype=torch.bool)
        mask[engines] = True
        if seeded:
            which = torch.zeros(n, dtype=torch.bool)
            values = torch.zeros((2, n), dtype=torch.int64)
            for i, (seed, env_index) in seeded.items():
                which[i], values[0, i], values[1, i] = True, seed, env_index
            group.env.seed_engines(which, values[0], values[1])
        td = _host(group.env.reset(mask=mask))
        out = {}
        for i in engines:
            group.replays[i].has_reset = True
            info = {"step": 0, "episode_id": group.replays[i].episode_id, "total_reward": 0.0}
            if self.expose_health:
                info |= _health_info(td, i, 1)
            out[i] = (td["row"][i].tolist(), info)
        return out

    def step(self, token: str, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Step each listed episode; one partial `env.step` per (group, step_size).

        Everything is validated before any engine moves: unknown episodes, repeats, step sizes,
        counters, episodes never reset. What a finished episode does is the group env's rule.
        """
        for a in actions:
            if not 1 <= a["step_size"] <= self.limits.max_step_size:
                raise ServerError(422, f"step_size must be in [1, {self.limits.max_step_size}], got {a['step_size']}")
        # JSON Schema cannot say "no episode twice" of a list of objects: a repeat is a conflict.
        located = self._locate(token, [a["episode_id"] for a in actions], repeat_status=409)
        with self._holding(g for g, _ in located):
            results: list[dict | None] = [None] * len(actions)
            batches: dict[tuple[str, int], list[int]] = {}
            for j, (a, (group, i)) in enumerate(zip(actions, located, strict=True)):
                replay = group.replays[i]
                request = [a["action"], a["step_size"]]
                counter = a.get("step_counter")
                results[j] = _replay("step", a["episode_id"], counter, replay.step_counter, replay.last_step, request)
                if results[j] is not None:
                    continue  # a retried step: the stored answer, no second step
                if not replay.has_reset:
                    raise ServerError(409, f"episode {a['episode_id']} has not been reset yet")
                batches.setdefault((group.group_id, a["step_size"]), []).append(j)
            for (_, step_size), js in batches.items():
                group = located[js[0]][0]
                answers = self._step_group(token, group, step_size, [(located[j][1], actions[j]) for j in js])
                for j, answer in zip(js, answers, strict=True):
                    results[j] = answer
        return results  # type: ignore[return-value]

    def _step_group(
        self, token: str, group: Group, step_size: int, items: list[tuple[int, dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """One partial step of a held group's env for `items` = [(engine, action dict)]."""
        env = group.env
        mask = torch.zeros(env.num_envs, dtype=torch.bool)
        actions = torch.zeros(env.num_envs, dtype=torch.int64)
        for i, a in items:
            mask[i], actions[i] = True, a["action"]
        # Finished engines of a group without auto_reset fly nothing (with it, the env restarts them).
        frozen = (~env.active).numpy() & (env.autoreset_mode is AutoresetMode.DISABLED)
        td = _host(env.step(actions, step_size, mask=mask))
        finished: list[FinishedEpisode] = []
        answers = [self._step_answer(group, i, td, bool(frozen[i]), finished) for i, _ in items]
        if finished:  # committed before any answer leaves: an acknowledged episode is never lost
            try:
                self.store.record(token, finished)
            except StoreError as err:
                detail = f"the step ended {len(finished)} episodes that could not be saved: {err}"
                raise ServerError(503, detail) from err
        # reset_if_done: the step and the next episode's start are one exactly-once unit
        ended = [i for i, a in items if a.get("reset_if_done") and td["episode_ended"][i]]
        restarted = self._restart(group, ended) if ended else {}
        for (i, a), answer in zip(items, answers, strict=True):
            replay = group.replays[i]
            if a.get("reset_if_done"):
                fresh = restarted.get(i)
                answer["reset"] = None if fresh is None else {"observation": fresh[0], "info": fresh[1]}
                if fresh is not None:
                    replay.reset_counter += 1
                    replay.last_reset = fresh
            if a.get("step_counter") is not None:
                replay.step_counter = a["step_counter"]
                replay.last_step = answer | {"request": [a["action"], a["step_size"]]}
        return answers

    def _step_answer(
        self, group: Group, i: int, td: dict[str, np.ndarray], frozen: bool, finished: list[FinishedEpisode]
    ) -> dict[str, Any]:
        """Engine i's answer, read from the step's outputs (`_host`); an episode that ended goes
        to `finished`."""
        info = {"step": int(td["age"][i]), "episode_id": group.replays[i].episode_id}
        info["total_reward"] = float(td["return_so_far"][i])
        terminated, truncated = bool(td["terminated"][i]), bool(td["truncated"][i])
        if frozen:
            info["message"] = "episode finished: reset it to continue"
            return {"rows": [], "reward": 0.0, "terminated": terminated, "truncated": truncated, "info": info}
        k = int(td["new_rows"][i])
        failed = bool(td["episode_failed"][i])
        info |= {"failed": failed, "repairs": int(td["repairs"][i])}
        if terminated:
            info["reason"] = "failure" if failed else "sold"
        elif truncated:
            info["reason"] = "time limit"
        if td["episode_ended"][i]:
            ended = FinishedEpisode.now(
                float(td["episode_return"][i]), int(td["episode_repairs"][i]), int(td["episode_length"][i]), failed
            )
            finished.append(ended)
        if self.expose_health:
            info |= _health_info(td, i, k)
        rows = td["observation"][i, td["observation"].shape[1] - k :] if k else td["observation"][i, :0]
        return {
            "rows": rows.tolist(),
            "reward": float(td["reward"][i]),
            "terminated": terminated,
            "truncated": truncated,
            "info": info,
        }

    def episode_info(self, token: str, episode_id: str) -> dict[str, Any]:
        """Where an episode stands (`env.current()`), read under its group's lock (never half a step)."""
        ((group, i),) = self._locate(token, [episode_id])
        with self._holding([group]):
            replay = group.replays[i]
            now = _host(group.env.current())
            return {
                "episode_id": episode_id,
                "vectorized_group_id": group.group_id,
                "step": int(now["age"][i]),
                "terminated": bool(now["terminated"][i]),
                "truncated": bool(now["truncated"][i]),
                "total_reward": float(now["return_so_far"][i]),
                "max_steps_per_episode": group.max_steps_per_episode,
                "step_counter": replay.step_counter,
                "reset_counter": replay.reset_counter,
                "observation": now["row"][i].tolist(),
            }


def _host(td) -> dict[str, np.ndarray]:
    """A group env's outputs as numpy arrays (its env runs on the CPU): read once per request."""
    return {key: value.numpy() for key, value in td.items()}


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


def _health_info(td: dict[str, np.ndarray], i: int, rows: int) -> dict[str, Any]:
    """Hidden state, as the challenge server sends it (the client hides it unless prod=False):
    engine i's health now and that of its newest `rows` window rows."""
    health = float(td["health"][i])
    window_health = td["window_health"][i]
    return {
        "degradation": 1.0 - health,
        "health": health,
        "wear_rate": float(td["wear_rate"][i]),
        "repairs": int(td["repairs"][i]),
        "health_rows": window_health[len(window_health) - rows :].tolist() if rows else [],
    }

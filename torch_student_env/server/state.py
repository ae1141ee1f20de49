"""The reference server's state, with no web framework: one object the routes call, which
checks each request against the server's `Limits` and composes the rooms that hold the rest:

- `sessions`: sessions, the registry of episodes, expiry and the locks of groups;
- `groups`: N engines as one env, stepped together (`client_view` reads the answers);
- `replay`: exactly-once steps and resets (`step_counter`, `reset_counter`);
- `store`: the finished episodes of each token, for its leaderboard score.

Exactly-once steps: a request may carry a per-episode `step_counter` (the number of steps the
client has taken on that episode, starting at 1). A repeated counter gets the stored answer
without stepping again, so a client can safely retry a step whose response was lost.
`reset_counter` does the same for resets. Every finished episode is committed to the store
before the answer that reports it leaves. Every public method is thread-safe.
"""

from __future__ import annotations

from typing import Any

from torch_student_env.client_view import finished_episodes
from torch_student_env.leaderboard import SCORE_WINDOW, score_metrics
from torch_student_env.server import groups
from torch_student_env.server.config import Limits
from torch_student_env.server.errors import ServerError
from torch_student_env.server.groups import Group
from torch_student_env.server.sessions import Registry, holding
from torch_student_env.server.store import ScoreStore, StoreError
from torch_student_env.sim.params import SimParams

__all__ = ["Limits", "ServerError", "ServerState"]


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
        self.registry = Registry(self.limits)

    # -- sessions and groups --------------------------------------------------------------------
    def create_session(self, token: str) -> str:
        """A new session (`Registry.create_session`: past the limit, the token's oldest goes)."""
        return self.registry.create_session(token)

    def close_session(self, token: str, session_id: str) -> None:
        """Release a session, its groups and their episodes (404 for another token's session)."""
        self.registry.close_session(token, session_id)

    def create_group(
        self,
        token: str,
        session_id: str | None,
        num_envs: int,
        max_steps_per_episode: int | None = None,
        auto_reset: bool = True,
    ) -> Group:
        """N new engines in the session; every limit is checked before anything is allocated.
        `max_steps_per_episode` None: the client's default, 1,000 (at most this server's limit)."""
        limits = self.limits
        if max_steps_per_episode is None:
            max_steps_per_episode = limits.default_steps_per_episode
        _check_range("num_envs", num_envs, limits.max_envs_per_request)
        _check_range("max_steps_per_episode", max_steps_per_episode, limits.max_steps_per_episode)
        session = self.registry.reserve(token, session_id, num_envs)
        try:
            group = groups.new_group(num_envs, max_steps_per_episode, auto_reset, self.expose_health, self.params)
        except BaseException:
            self.registry.unreserve(session, num_envs)
            raise
        self.registry.add(session, group)
        return group

    def warm_up(self) -> None:
        """Load the compiled step of the groups most requests make (the client's default flight
        limit and step size), or start building it in the background, before serving. No request
        ever waits for it: groups step eagerly until it is ready (`fast_path.CompiledStep`).
        Groups without auto-reset (rare: the client's default is on) have a step of their own."""
        group = groups.new_group(4, self.limits.default_steps_per_episode, True, self.expose_health, self.params)
        group.env.step([0, 0, 0, 0])

    # -- leaderboard ----------------------------------------------------------------------------
    def score(self, token: str, limit: int = SCORE_WINDOW) -> dict[str, Any]:
        """The challenge's leaderboard metrics over the token's last `limit` finished episodes."""
        _check_range("limit", limit, self.limits.scored_episodes_per_token)
        return score_metrics(self.store.last(token, limit), limit)

    def scored_tokens(self) -> list[str]:
        """The tokens with at least one finished episode."""
        return self.store.tokens()

    # -- episodes -------------------------------------------------------------------------------
    def start_episodes(self, group: Group, engines: list[int]) -> dict[int, tuple[list[float], dict]]:
        """Start the next episode of `engines` of a group the caller does not hold yet."""
        with holding([group]):
            return groups.restart(group, engines, self.expose_health)

    def reset(
        self,
        token: str,
        episode_ids: list[str],
        seeds: list[int | None],
        env_indices: list[int] | None,
        reset_counters: list[int] | None,
    ) -> tuple[list[list[float]], list[dict]]:
        """Start the next episode of each listed engine; a given seed re-keys it first."""
        located = self.registry.locate(token, episode_ids)
        counters = reset_counters if reset_counters is not None else [None] * len(located)
        with holding(g for g, _ in located):
            results: list[tuple[list[float], dict] | None] = [None] * len(located)
            by_group: dict[str, list[int]] = {}
            for j, (group, i) in enumerate(located):
                results[j] = group.replays[i].replayed_reset(counters[j])
                if results[j] is None:  # not a retried reset, which is answered without resetting again
                    by_group.setdefault(group.group_id, []).append(j)
            for js in by_group.values():
                group = located[js[0]][0]
                seeded = {
                    located[j][1]: (seeds[j], env_indices[j] if env_indices else 0) for j in js if seeds[j] is not None
                }
                restarted = groups.restart(group, [located[j][1] for j in js], self.expose_health, seeded)
                for j in js:
                    results[j] = restarted[located[j][1]]
                    if counters[j] is not None:
                        group.replays[located[j][1]].record_reset(counters[j], results[j])
        return [r[0] for r in results], [r[1] for r in results]

    def step(self, token: str, actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Step each listed episode; one partial `env.step` per (group, step_size).

        Everything is validated before any engine moves: unknown episodes, repeats, step sizes,
        counters, episodes never reset. What a finished episode does is the group env's rule.
        """
        for a in actions:
            a["step_size"] = self.step_size(a.get("step_size"))
            _check_range("step_size", a["step_size"], self.limits.max_step_size)
        # JSON Schema cannot say "no episode twice" of a list of objects: a repeat is a conflict.
        located = self.registry.locate(token, [a["episode_id"] for a in actions], repeat_status=409)
        with holding(g for g, _ in located):
            results: list[dict | None] = [None] * len(actions)
            batches: dict[tuple[str, int], list[int]] = {}
            for j, (a, (group, i)) in enumerate(zip(actions, located, strict=True)):
                replay = group.replays[i]
                results[j] = replay.replayed_step(a.get("step_counter"), [a["action"], a["step_size"]])
                if results[j] is not None:
                    continue  # a retried step: the stored answer, no second step
                if not replay.has_reset:
                    raise ServerError(409, f"episode {a['episode_id']} has not been reset yet")
                batches.setdefault((group.group_id, a["step_size"]), []).append(j)
            for (_, step_size), js in batches.items():
                group = located[js[0]][0]
                answers = self._step_group(token, group, step_size, {located[j][1]: actions[j] for j in js})
                for j in js:
                    results[j] = answers[located[j][1]]
        return results  # type: ignore[return-value]

    def step_size(self, asked: int | None) -> int:
        """The flights a step request asks for: a left-out step size is the client's default,
        within this server's limit (checked by `step`)."""
        return self.limits.default_step_size if asked is None else asked

    def _step_group(self, token: str, group: Group, step_size: int, asked: dict[int, dict[str, Any]]) -> dict:
        """One partial step of a held group: commit its finished episodes, then start the next
        episode of those that asked (`reset_if_done`) and keep the answers for retries."""
        out, answers = groups.step(group, step_size, {i: a["action"] for i, a in asked.items()}, self.expose_health)
        finished = finished_episodes(out)  # only engines that flew can end: those asked
        if finished:  # committed before any answer leaves: an acknowledged episode is never lost
            try:
                self.store.record(token, finished)
            except StoreError as err:
                detail = f"the step ended {len(finished)} episodes that could not be saved: {err}"
                raise ServerError(503, detail) from err
        # reset_if_done: the step and the next episode's start are one exactly-once unit
        ended = [i for i, a in asked.items() if a.get("reset_if_done") and out["episode_ended"][i]]
        restarted = groups.restart(group, ended, self.expose_health) if ended else {}
        for i, a in asked.items():
            replay, answer = group.replays[i], answers[i]
            if a.get("reset_if_done"):
                fresh = restarted.get(i)
                answer["reset"] = None if fresh is None else {"observation": fresh[0], "info": fresh[1]}
                if fresh is not None:
                    replay.record_reset(None, fresh)
            replay.record_step(a.get("step_counter"), [a["action"], a["step_size"]], answer)
        return answers

    def episode_info(self, token: str, episode_id: str) -> dict[str, Any]:
        """Where an episode stands, read under its group's lock (never half a step)."""
        ((group, i),) = self.registry.locate(token, [episode_id])
        with holding([group]):
            return groups.status(group, i)


def _check_range(name: str, value: int, high: int) -> None:
    """This server's limit on a value the request body bounded by the absolute maximum (422)."""
    if not 1 <= value <= high:
        raise ServerError(422, f"{name} must be in [1, {high}], got {value}")

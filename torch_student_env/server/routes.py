"""The protocol's HTTP routes: one module-level router per resource, as FastAPI's project
template lays them out (dependencies in `server.deps`).

Each route checks what HTTP alone can check, calls one `ServerState` method, and returns a typed
answer (`server.models`). Bodies are bounded by any server's absolute maxima; the app's own
`Limits` are enforced by `ServerState` and published by `models.publish_limits`.

Speed (docs/reliability.md, `scripts/load.py`). The routes a training loop calls at every step
(step, reset, status) are `async def` and run a small request's work inline, on the event loop:
a 4-engine step is well under a millisecond, and the hop to a thread pool and back cost a fifth
of it. A request of more than `INLINE_FLIGHTS` flights runs in the thread pool, so that the event
loop goes on serving the other clients while a long step runs. Rare routes
that may take longer (sessions, groups, scores) are plain `def`: always in the thread pool. The
step and reset routes build their answer as plain values and encode it once with orjson
(`json_answer`): their declared `response_model` is what the schema publishes, and the schema
tests check the answers against it, so FastAPI's second validation of an answer the server
built itself is skipped.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations as objects.
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from torch_student_env.client_view import FIRST_FLIGHT_FAILURE
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.server.config import ABSOLUTE_MAX
from torch_student_env.server.deps import SessionHeader, StateDep, TokenDep
from torch_student_env.server.errors import ServerError
from torch_student_env.server.models import (
    EnvConfigBody,
    EpisodeAction,
    EpisodeCreated,
    EpisodeStatus,
    GroupCreated,
    LatestState,
    Restarted,
    Score,
    SessionCreated,
    SessionDeleted,
    SingleReset,
    SingleStep,
    StepAnswer,
    VectorizedCreate,
    VectorizedReset,
    VectorizedResetAnswer,
    VectorizedStep,
    VectorizedStepAnswer,
    Version,
    errors,
    given,
)
from torch_student_env.server.page import leaderboard_page

# The newest client's CLIENT_VERSION (student_client 1.0.1 reports "0.4"): the client compares it
# with its own and warns when it is older.
PROTOCOL_VERSION = "0.4"
FEATURES = ["step_counter", "reset_counter", "env_indices", "step_resets", "session_delete", "score", "leaderboard"]

sessions = APIRouter(prefix="/api/v1", tags=["sessions"])
episodes = APIRouter(prefix="/api/v1", tags=["episodes"])
scores = APIRouter(tags=["scores"])
ROUTERS = (sessions, episodes, scores)

BODY_ERRORS = errors(400, 401, 404, 409, 413, 422)
Limit = Annotated[int, Query(ge=1, le=ABSOLUTE_MAX["scored_episodes_per_token"])]


# About 1.5 ms of simulation on one core: above it, a request runs in the thread pool.
INLINE_FLIGHTS = 2048


async def _simulate(flights: int, work, *args):
    """`work(*args)`, inline when it flies at most `INLINE_FLIGHTS` flights, else in the thread pool."""
    if flights <= INLINE_FLIGHTS:
        return work(*args)
    return await run_in_threadpool(work, *args)


def json_answer(content: dict) -> Response:
    """An answer the server built itself, encoded once (see the module docstring)."""
    return Response(orjson.dumps(content), media_type="application/json")


def _observation(rows: list[list[float]], return_all_states: bool) -> list:
    """Every row of the step, or its newest (none when the step flew no row)."""
    if return_all_states:
        return rows
    return rows[-1] if rows else []


def _action(a: EpisodeAction | SingleStep) -> dict:
    """A step request as `ServerState.step` takes it: a left-out step size is None (the server's
    default within its limits)."""
    return a.model_dump() | {"step_size": given(a, "step_size")}


# -- sessions --------------------------------------------------------------------------------------
@sessions.get("/version")
async def version() -> Version:
    return Version(latest_version=PROTOCOL_VERSION, server="torch_student_env", features=FEATURES)


@sessions.post("/session/create", responses=errors(401))
def create_session(state: StateDep, token: TokenDep) -> SessionCreated:
    return SessionCreated(session_id=state.create_session(token))


@sessions.delete("/session/{session_id}", responses=errors(401, 404))
def delete_session(session_id: str, state: StateDep, token: TokenDep) -> SessionDeleted:
    state.close_session(token, session_id)
    return SessionDeleted(session_id=session_id, deleted=True)


# -- episodes --------------------------------------------------------------------------------------
@episodes.post("/vectorized/episodes/create", responses=BODY_ERRORS)
def create_vectorized(
    body: VectorizedCreate, state: StateDep, token: TokenDep, session_id: SessionHeader
) -> GroupCreated:
    config = body.env_config
    max_steps = given(config, "max_steps_per_episode")
    group = state.create_group(token, session_id, body.num_envs, max_steps, config.auto_reset)
    return GroupCreated(episode_ids=group.episode_ids, vectorized_group_id=group.group_id)


@episodes.post("/episode/create", responses=BODY_ERRORS)
def create_episode(body: EnvConfigBody, state: StateDep, token: TokenDep, session_id: SessionHeader) -> EpisodeCreated:
    """One episode, already reset: the single-env client reads `initial_observation`."""
    group = state.create_group(token, session_id, 1, given(body, "max_steps_per_episode"), body.auto_reset)
    (row, info) = state.start_episodes(group, [0])[0]
    return EpisodeCreated(episode_id=group.episode_ids[0], initial_observation=row, info=info)


@episodes.post("/episode/vectorized_reset", response_model=VectorizedResetAnswer, responses=BODY_ERRORS)
async def vectorized_reset(body: VectorizedReset, state: StateDep, token: TokenDep) -> Response:
    n = len(body.episode_ids)
    for name in ("seeds", "env_indices", "reset_counters"):
        value = getattr(body, name)
        if value is not None and len(value) != n:
            # A rule across fields, which JSON Schema cannot state: documented as a conflict.
            raise ServerError(409, f"{name} has {len(value)} entries for {n} episode_ids")
    args = (token, body.episode_ids, body.seeds or [None] * n, body.env_indices, body.reset_counters)
    obs, infos = await _simulate(n, state.reset, *args)
    return json_answer({"observations": obs, "infos": infos})


@episodes.post("/episode/vectorized_step", response_model=VectorizedStepAnswer, responses=BODY_ERRORS | errors(503))
async def vectorized_step(body: VectorizedStep, state: StateDep, token: TokenDep) -> Response:
    asked = body.episode_actions
    actions = [_action(a) for a in asked]
    flights = sum(state.step_size(a["step_size"]) for a in actions)
    results = await _simulate(flights, state.step, token, actions)
    return json_answer(
        {
            "observations": [_observation(r["rows"], a.return_all_states) for r, a in zip(results, asked, strict=True)],
            "rewards": [r["reward"] for r in results],
            "terminateds": [r["terminated"] for r in results],
            "truncateds": [r["truncated"] for r in results],
            "infos": [r["info"] for r in results],
            "step_counters": [a.step_counter for a in asked],
            "resets": [r.get("reset") for r in results],
        }
    )


@episodes.post("/episode/reset", responses=errors(400, 401, 404, 413, 422))
async def reset_episode(body: SingleReset, state: StateDep, token: TokenDep) -> Restarted:
    obs, infos = state.reset(token, [body.episode_id], [body.seed], None, None)
    return Restarted(observation=obs[0], info=infos[0])


@episodes.post("/episode/step", response_model=StepAnswer, responses=BODY_ERRORS | errors(500, 503))
async def step_episode(body: SingleStep, state: StateDep, token: TokenDep) -> Response:
    (r,) = state.step(token, [_action(body)])
    if r["failed_first_flight"]:
        # As the challenge's server does (docs/protocol.md, from its logs): scripts written against it
        # rely on what its client makes of this answer. The episode is over and scored.
        raise ServerError(500, f"{FIRST_FLIGHT_FAILURE} (flight {r['info']['step']})")
    return json_answer(
        {
            "observation": _observation(r["rows"], body.return_all_states),
            "reward": r["reward"],
            "terminated": r["terminated"],
            "truncated": r["truncated"],
            "step": r["info"]["step"],
            "info": r["info"],
        }
    )


@episodes.get("/episode/{episode_id}", responses=errors(401, 404, 422))
async def episode_info(episode_id: str, state: StateDep, token: TokenDep) -> EpisodeStatus:
    return EpisodeStatus(**state.episode_info(token, episode_id))


@episodes.get("/episode/{episode_id}/state/latest", responses=errors(401, 404, 422))
async def latest_state(episode_id: str, state: StateDep, token: TokenDep) -> LatestState:
    info = state.episode_info(token, episode_id)
    return LatestState(**{k: info[k] for k in LatestState.model_fields})


# -- scores ----------------------------------------------------------------------------------------
@scores.get("/api/v1/user/{user_token}/score", responses=errors(404, 422))
def user_score(user_token: str, request: Request, state: StateDep, limit: Limit = SCORE_WINDOW) -> Score:
    """The challenge's leaderboard metrics over the token's last `limit` finished episodes.

    The token in the path is the credential, as in the client's `get_leaderboard_score`: a
    token sees only its own score, and an unknown one gets 404.
    """
    if user_token not in request.app.state.tokens:
        raise ServerError(404, "unknown user")
    return Score(metrics=state.score(user_token, limit), limit=limit)


@scores.get("/leaderboard", response_class=HTMLResponse, responses=errors(422))
def leaderboard(request: Request, state: StateDep, limit: Limit = SCORE_WINDOW) -> str:
    """Every token's score under its display name (never the token), best total first."""
    names = state.store.names()  # a token of an earlier tokens file keeps its name
    standings = [(names.get(t, "player ?"), state.score(t, limit)) for t in state.scored_tokens()]
    return leaderboard_page([(name, m) for name, m in standings if m], limit)

"""The challenge's HTTP protocol (docs/protocol.md) as a FastAPI app over `ServerState`."""

# No `from __future__ import annotations` here: the routes' body types are built per app from its
# `Limits` (`request_models`), and FastAPI reads them from the annotations, which must be objects.
import html
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from torch_student_env.adapters import require

require("fastapi", "server")

from fastapi import Depends, FastAPI, Header, Query, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.openapi.utils import get_openapi  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema  # noqa: E402

from torch_student_env.config import MAX_ENV_OFFSET, MAX_SEED  # noqa: E402
from torch_student_env.server.state import Limits, ServerError, ServerState  # noqa: E402
from torch_student_env.sim.params import SimParams  # noqa: E402
from torch_student_env.spec import DEFAULT_TOKEN  # noqa: E402

log = logging.getLogger("torch_student_env.server")
# The newest client's CLIENT_VERSION (student_client 1.0.1 reports "0.4"): the client compares it
# with its own and warns when it is older.
PROTOCOL_VERSION = "0.4"
FEATURES = ["step_counter", "reset_counter", "env_indices", "step_resets", "session_delete", "score", "leaderboard"]


def _integral(value: Any) -> Any:
    """JSON Schema's integers include 41.0: take an integral float as the int it is.

    Everything else goes on to the strict int check, so `"41"`, `true` and 41.5 stay refused.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Every integer is bounded before any state changes: seeds and indices become int64 tensors.
def _int(low: int, high: int) -> Any:
    """An int field bounded to [low, high] that also takes an integral float."""
    # The published bounds are set exactly: derived through the validator they would be floats,
    # and 2**63 - 1 as a float is 2**63.
    exact = WithJsonSchema({"type": "integer", "minimum": low, "maximum": high})
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_integral), exact]


Action = _int(0, 2)
Seed = _int(0, MAX_SEED)
EnvIndex = _int(0, MAX_ENV_OFFSET)
Counter = _int(1, 2**62)
# Ids are the server's own hex strings; a bounded length keeps a request's size predictable.
EpisodeId = Annotated[str, Field(max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class SingleReset(_Body):
    episode_id: EpisodeId
    seed: Seed | None = None


class RequestModels(NamedTuple):
    """The request bodies whose bounds are a server's `Limits`: built once per app."""

    EnvConfigBody: type[BaseModel]
    VectorizedCreate: type[BaseModel]
    VectorizedReset: type[BaseModel]
    EpisodeAction: type[BaseModel]
    VectorizedStep: type[BaseModel]
    SingleStep: type[BaseModel]


def request_models(limits: Limits) -> RequestModels:
    """The bodies of `limits`: episodes per request, flights per step and per episode are its own,
    in validation and in the published schema alike."""
    StepSize = _int(1, limits.max_step_size)  # noqa: N806 (a type)
    per_request = limits.max_envs_per_request
    # The episodes of one request: published here, enforced by `ServerState` (whose message names
    # the count and the limit); the body-size limit bounds what is parsed before that.
    batch = {"maxItems": per_request}

    class EnvConfigBody(BaseModel):
        """The seed client's `env_config`; unknown fields are ignored as the challenge server does."""

        model_config = ConfigDict(strict=True, extra="ignore")
        env_type: str = "DegradationEnv"
        max_steps_per_episode: _int(1, limits.max_steps_per_episode) = min(1000, limits.max_steps_per_episode)
        auto_reset: bool = True
        step_size: StepSize = min(10, limits.max_step_size)

    class VectorizedCreate(_Body):
        env_config: EnvConfigBody = EnvConfigBody()
        num_envs: _int(1, per_request)

    class VectorizedReset(_Body):
        episode_ids: list[EpisodeId] = Field(min_length=1, json_schema_extra=batch | {"uniqueItems": True})
        seeds: list[Seed | None] | None = None
        env_indices: list[EnvIndex] | None = None
        reset_counters: list[Counter] | None = None

    class EpisodeAction(_Body):
        episode_id: EpisodeId
        action: Action
        step_size: StepSize = min(10, limits.max_step_size)
        return_all_states: bool = True
        step_counter: Counter | None = None
        reset_if_done: bool = False  # start the next episode in this request if this step ends one

    class VectorizedStep(_Body):
        episode_actions: list[EpisodeAction] = Field(min_length=1, json_schema_extra=batch)

    class SingleStep(_Body):
        episode_id: EpisodeId
        action: Action
        step_size: StepSize = min(10, limits.max_step_size)
        return_all_states: bool = True

    return RequestModels(EnvConfigBody, VectorizedCreate, VectorizedReset, EpisodeAction, VectorizedStep, SingleStep)


class Rejected(BaseModel):
    """Every error answer: `detail` says what was wrong, naming the value."""

    detail: str


class InvalidField(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Invalid(BaseModel):
    """422: a list naming each field that failed validation, or a string for rules that span
    fields (list lengths that differ, an episode listed twice)."""

    detail: str | list[InvalidField]


_WHY = {
    400: (Rejected, "a body that is not JSON"),
    401: (Rejected, "missing or unknown User-Token"),
    404: (Rejected, "session, episode or user not found (or another token's)"),
    409: (
        Rejected,
        "conflicts with the current state: counter out of sequence, episode never reset, "
        "session or token at its engine limit",
    ),  # fmt: skip
    413: (Rejected, "request body over the size limit"),
    422: (Invalid, "invalid request"),
    500: (
        Rejected,
        "single-engine step only: the engine failed on the step's first flight (the episode is over; "
        "the challenge's server answers this case with an error, which its client reports as reward 0, "
        "terminated)",
    ),  # fmt: skip
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: the error answers it can give, each a JSON body."""
    return {
        code: {
            "description": why,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
        for code, (model, why) in ((c, _WHY[c]) for c in codes)
    }


def _exact_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Publish the models' schemas exactly as pydantic writes them.

    FastAPI passes schemas through its own OpenAPI model, which stores bounds as floats: the
    seed's maximum 2**63 - 1 would be published as 2**63, a value the server refuses.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                exact = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, nested in exact.pop("$defs", {}).items():
                    components[name] = nested
                components[model.__name__] = exact
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def _user(request: Request, user_token: Annotated[str | None, Header(alias="User-Token")] = None) -> str:
    """The request's token, if the server accepts it (401 otherwise)."""
    if not user_token:
        raise ServerError(401, "missing User-Token header")
    if user_token not in request.app.state.tokens:
        raise ServerError(401, "unknown User-Token")
    return user_token


Token = Annotated[str, Depends(_user)]
SessionHeader = Annotated[str, Header(alias="Session-ID", min_length=1, max_length=64)]


class _BodyTooLarge(Exception):
    pass


class GuardBodies:
    """ASGI middleware: a request with a body is checked before a byte of it is read.

    The token comes first (401 without reading the body: no memory for strangers), then a
    declared `Content-Length` over the limit (413), then the body is counted while it streams
    in and refused (413) at the first chunk past the limit: a chunked body with no length is
    never buffered whole.
    """

    def __init__(self, app, limit: int, tokens) -> None:
        self.app, self.limit, self.tokens = app, limit, tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = headers.get(b"user-token", b"").decode("latin-1")
        if not token or token not in self.tokens:
            await _reply(send, 401, "missing User-Token header" if not token else "unknown User-Token")
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _reply(
                send, 413, f"request body of {length.decode('latin-1')} bytes exceeds the {self.limit}-byte limit"
            )
            return
        received, too_large, replied = 0, False, False

        async def counted_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _BodyTooLarge  # the framework answers an error (FastAPI: 400); replaced below
            return message

        async def guarded_send(message):
            nonlocal replied
            if not too_large:
                await send(message)
            elif not replied:  # whatever the app answers to a body cut short, the client gets the 413
                replied = True
                await _reply(send, 413, f"request body exceeds the {self.limit}-byte limit")

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not replied:
                await _reply(send, 413, f"request body exceeds the {self.limit}-byte limit")


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _observation(rows: list[list[float]], return_all_states: bool) -> Any:
    if return_all_states:
        return rows
    return rows[-1] if rows else []


def create_app(
    tokens: set[str] | dict[str, str] | None = None,
    limits: Limits | None = None,
    params: SimParams | None = None,
    expose_health: bool = True,
) -> FastAPI:
    """A FastAPI app serving the embedded simulator over the challenge protocol."""
    state = ServerState(limits, params, expose_health)
    tokens = display_names(tokens) if tokens is not None else load_tokens()
    app = FastAPI(title="torch_student_env reference server", version=PROTOCOL_VERSION)
    app.state.server = state
    app.state.tokens = tokens

    m = request_models(state.limits)
    _exact_openapi(app, [m.EnvConfigBody, m.VectorizedCreate, m.VectorizedReset, m.VectorizedStep, SingleReset,
                         m.SingleStep, Rejected, Invalid])  # fmt: skip
    app.add_middleware(GuardBodies, limit=state.limits.max_body_bytes, tokens=app.state.tokens)

    @app.exception_handler(ServerError)
    async def server_error(_: Request, err: ServerError):
        return JSONResponse({"detail": err.detail}, err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError):
        """FastAPI's 422, made JSON-safe: the offending input is never echoed (it may be inf,
        NaN or a lone surrogate, which would turn the answer into a 500)."""
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
                  for e in err.errors()]  # fmt: skip
        return JSONResponse({"detail": errors}, 422)

    @app.get("/api/v1/version")
    def version() -> dict:
        return {"latest_version": PROTOCOL_VERSION, "server": "torch_student_env", "features": FEATURES}

    @app.post("/api/v1/session/create", responses=_errors(401))
    def create_session(token: Token) -> dict:
        return {"session_id": state.create_session(token)}

    @app.delete("/api/v1/session/{session_id}", responses=_errors(401, 404))
    def delete_session(session_id: str, token: Token) -> dict:
        state.close_session(token, session_id)
        return {"session_id": session_id, "deleted": True}

    @app.post("/api/v1/vectorized/episodes/create", responses=_errors(400, 401, 404, 409, 413, 422))
    def create_vectorized(body: m.VectorizedCreate, token: Token, session_id: SessionHeader) -> dict:
        config = body.env_config
        group = state.create_group(token, session_id, body.num_envs, config.max_steps_per_episode, config.auto_reset)
        return {"episode_ids": group.episode_ids, "vectorized_group_id": group.group_id}

    @app.post("/api/v1/episode/create", responses=_errors(400, 401, 404, 409, 413, 422))
    def create_episode(body: m.EnvConfigBody, token: Token, session_id: SessionHeader) -> dict:
        """One episode, already reset: the single-env client reads `initial_observation`."""
        group = state.create_group(token, session_id, 1, body.max_steps_per_episode, body.auto_reset)
        (row, info) = state.start_episodes(group, [0])[0]
        return {"episode_id": group.episode_ids[0], "initial_observation": row, "info": info}

    @app.post("/api/v1/episode/vectorized_reset", responses=_errors(400, 401, 404, 409, 413, 422))
    def vectorized_reset(body: m.VectorizedReset, token: Token) -> dict:
        n = len(body.episode_ids)
        for name in ("seeds", "env_indices", "reset_counters"):
            value = getattr(body, name)
            if value is not None and len(value) != n:
                raise ServerError(422, f"{name} has {len(value)} entries for {n} episode_ids")
        obs, infos = state.reset(
            token, body.episode_ids, body.seeds or [None] * n, body.env_indices, body.reset_counters
        )
        return {"observations": obs, "infos": infos}

    @app.post("/api/v1/episode/vectorized_step", responses=_errors(400, 401, 404, 409, 413, 422))
    def vectorized_step(body: m.VectorizedStep, token: Token) -> dict:
        results = state.step(token, [a.model_dump() for a in body.episode_actions])
        return {
            "observations": [
                _observation(r["rows"], a.return_all_states) for r, a in zip(results, body.episode_actions, strict=True)
            ],
            "rewards": [r["reward"] for r in results],
            "terminateds": [r["terminated"] for r in results],
            "truncateds": [r["truncated"] for r in results],
            "infos": [r["info"] for r in results],
            "step_counters": [a.step_counter for a in body.episode_actions],
            "resets": [r.get("reset") for r in results],
        }

    @app.post("/api/v1/episode/reset", responses=_errors(400, 401, 404, 413, 422))
    def reset_episode(body: SingleReset, token: Token) -> dict:
        obs, infos = state.reset(token, [body.episode_id], [body.seed], None, None)
        return {"observation": obs[0], "info": infos[0]}

    @app.post("/api/v1/episode/step", responses=_errors(400, 401, 404, 409, 413, 422, 500))
    def step_episode(body: m.SingleStep, token: Token) -> dict:
        (r,) = state.step(token, [body.model_dump()])
        if r["terminated"] and r["info"].get("failed") and not r["rows"]:
            # As the challenge's server does (its logs, ../shared/data): scripts written against it
            # rely on what its client makes of this answer. The episode is over and scored.
            raise ServerError(500, f"engine failed on the first flight of the step (flight {r['info']['step']})")
        return {
            "observation": _observation(r["rows"], body.return_all_states),
            "reward": r["reward"],
            "terminated": r["terminated"],
            "truncated": r["truncated"],
            "step": r["info"]["step"],
            "info": r["info"],
        }

    @app.get("/api/v1/episode/{episode_id}", responses=_errors(401, 404, 422))
    def episode_info(episode_id: str, token: Token) -> dict:
        return state.episode_info(token, episode_id)

    @app.get("/api/v1/episode/{episode_id}/state/latest", responses=_errors(401, 404, 422))
    def latest_state(episode_id: str, token: Token) -> dict:
        info = state.episode_info(token, episode_id)
        keys = ("episode_id", "step", "terminated", "truncated", "total_reward", "observation")
        return {k: info[k] for k in keys}

    @app.get("/api/v1/user/{user_token}/score", responses=_errors(404, 422))
    def user_score(user_token: str, limit: int = Query(100, ge=1, le=state.limits.scored_episodes_per_token)) -> dict:
        """The challenge's leaderboard metrics over the token's last `limit` finished episodes.

        The token in the path is the credential, as in the client's `get_leaderboard_score`: a
        token sees only its own score, and an unknown one gets 404.
        """
        if user_token not in app.state.tokens:
            raise ServerError(404, "unknown user")
        return {"metrics": state.score(user_token, limit), "limit": limit}

    @app.get("/leaderboard", response_class=HTMLResponse, responses=_errors(422))
    def leaderboard(limit: int = Query(100, ge=1, le=state.limits.scored_episodes_per_token)) -> str:
        """Every token's score under its display name (never the token), best total first."""
        scores = [(app.state.tokens[t], state.score(t, limit)) for t in state.scored_tokens()]
        return leaderboard_page([(name, m) for name, m in scores if m], limit)

    return app


def leaderboard_page(scores: list[tuple[str, dict[str, Any]]], limit: int) -> str:
    """An HTML page ranking (display name, metrics) by total reward of the last `limit` episodes."""
    rows = []
    for rank, (name, m) in enumerate(sorted(scores, key=lambda s: -s[1]["total_reward"]), start=1):
        cells = (
            rank,
            html.escape(name),
            f"{m['total_reward']:,.0f}",
            f"{m['avg_reward']:,.1f}",
            f"{m['best_reward']:,.1f}",
            m["total_maintenance"],
            f"{m['avg_steps']:.1f}",
            f"{100 * m['failure_rate']:.1f} %",
            m["total_episodes"],
            html.escape(m["last_episode_date"].replace("T", " ").replace("+00:00", " UTC")),
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "rank", "player", f"total reward (last {limit})", "mean", "best", "repairs",
        "mean length (flights)", "failure rate", "episodes", "last episode",
    )  # fmt: skip
    body = "\n".join(rows) or f'<tr><td colspan="{len(head)}">no finished episode yet</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Leaderboard</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ padding: .4rem .8rem; text-align: right; white-space: nowrap; }}
th {{ border-bottom: 2px solid #444; }} tr:nth-child(even) {{ background: #f3f3f3; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
</style></head><body>
<h1>Leaderboard</h1>
<p>Ranked by the total reward of each player's last {limit} finished episodes, as the challenge ranks.</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>
{body}
</table></body></html>
"""

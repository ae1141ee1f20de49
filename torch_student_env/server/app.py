"""The challenge's HTTP protocol (docs/protocol.md) as a FastAPI app over `ServerState`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

from torch_student_env.adapters import require

require("fastapi", "server")

from fastapi import Depends, FastAPI, Header, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from torch_student_env.server.state import Limits, ServerError, ServerState  # noqa: E402
from torch_student_env.sim.params import SimParams  # noqa: E402

log = logging.getLogger("torch_student_env.server")
PROTOCOL_VERSION = "0.1"
FEATURES = ["step_counter", "reset_counter", "env_indices"]
DEFAULT_TOKEN = "student_user"  # the seed client's default token


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class EnvConfigBody(BaseModel):
    """The seed client's `env_config`; unknown fields are ignored as the challenge server does."""

    model_config = ConfigDict(strict=True, extra="ignore")
    env_type: str = "DegradationEnv"
    max_steps_per_episode: int = Field(1000, ge=1)
    auto_reset: bool = True
    step_size: int = Field(10, ge=1, le=50)


class VectorizedCreate(_Body):
    env_config: EnvConfigBody = EnvConfigBody()
    num_envs: int = Field(ge=1)


class VectorizedReset(_Body):
    episode_ids: list[str] = Field(min_length=1)
    seeds: list[int | None] | None = None
    env_indices: list[Annotated[int, Field(ge=0)]] | None = None
    reset_counters: list[Annotated[int, Field(ge=1)]] | None = None


class EpisodeAction(_Body):
    episode_id: str
    action: int = Field(ge=0, le=2)
    step_size: int = Field(10, ge=1, le=50)
    return_all_states: bool = True
    step_counter: int | None = Field(None, ge=1)


class VectorizedStep(_Body):
    episode_actions: list[EpisodeAction] = Field(min_length=1)


class SingleReset(_Body):
    episode_id: str
    seed: int | None = None


class SingleStep(_Body):
    episode_id: str
    action: int = Field(ge=0, le=2)
    step_size: int = Field(10, ge=1, le=50)
    return_all_states: bool = True


def load_tokens(tokens_file: str | Path | None = None) -> set[str]:
    """Tokens from a file (one per line, # comments) or STUDENT_ENV_TOKENS (comma-separated).

    With neither, only the seed client's default token `student_user` is accepted, with a warning.
    """
    if tokens_file is not None:
        lines = Path(tokens_file).read_text().splitlines()
        tokens = {line.strip() for line in lines if line.strip() and not line.strip().startswith("#")}
        if not tokens:
            raise ValueError(f"{tokens_file} holds no token")
        return tokens
    env = os.environ.get("STUDENT_ENV_TOKENS", "")
    tokens = {t.strip() for t in env.split(",") if t.strip()}
    if not tokens:
        log.warning("no tokens configured: accepting only the default token %r", DEFAULT_TOKEN)
        tokens = {DEFAULT_TOKEN}
    return tokens


def _user(request: Request, user_token: Annotated[str | None, Header(alias="User-Token")] = None) -> str:
    """The request's token, if the server accepts it (401 otherwise)."""
    if not user_token:
        raise ServerError(401, "missing User-Token header")
    if user_token not in request.app.state.tokens:
        raise ServerError(401, "unknown User-Token")
    return user_token


Token = Annotated[str, Depends(_user)]
SessionHeader = Annotated[str | None, Header(alias="Session-ID")]


def _observation(rows: list[list[float]], return_all_states: bool) -> Any:
    if return_all_states:
        return rows
    return rows[-1] if rows else []


def create_app(
    tokens: set[str] | None = None,
    limits: Limits | None = None,
    params: SimParams | None = None,
    expose_health: bool = True,
) -> FastAPI:
    """A FastAPI app serving the embedded simulator over the challenge protocol."""
    state = ServerState(limits, params, expose_health)
    tokens = tokens if tokens is not None else load_tokens()
    app = FastAPI(title="torch_student_env reference server", version=PROTOCOL_VERSION)
    app.state.server = state
    app.state.tokens = tokens

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        limit = state.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return JSONResponse({"detail": f"request body of {length} bytes exceeds the {limit}-byte limit"}, 413)
        if length is None and request.method == "POST" and len(await request.body()) > limit:
            return JSONResponse({"detail": f"request body exceeds the {limit}-byte limit"}, 413)
        return await call_next(request)

    @app.exception_handler(ServerError)
    async def server_error(_: Request, err: ServerError):
        return JSONResponse({"detail": err.detail}, err.status)

    @app.get("/api/v1/version")
    def version() -> dict:
        return {"latest_version": PROTOCOL_VERSION, "server": "torch_student_env", "features": FEATURES}

    @app.post("/api/v1/session/create")
    def create_session(token: Token) -> dict:
        with state.lock:
            return {"session_id": state.create_session(token)}

    @app.post("/api/v1/vectorized/episodes/create")
    def create_vectorized(body: VectorizedCreate, token: Token, session_id: SessionHeader = None) -> dict:
        with state.lock:
            group = state.create_group(
                state.session(token, session_id), body.num_envs, body.env_config.max_steps_per_episode
            )
            return {"episode_ids": group.episode_ids, "vectorized_group_id": group.group_id}

    @app.post("/api/v1/episode/create")
    def create_episode(body: EnvConfigBody, token: Token, session_id: SessionHeader = None) -> dict:
        with state.lock:
            group = state.create_group(state.session(token, session_id), 1, body.max_steps_per_episode)
            return {"episode_id": group.episode_ids[0]}

    @app.post("/api/v1/episode/vectorized_reset")
    def vectorized_reset(body: VectorizedReset, token: Token) -> dict:
        n = len(body.episode_ids)
        for name in ("seeds", "env_indices", "reset_counters"):
            value = getattr(body, name)
            if value is not None and len(value) != n:
                raise ServerError(422, f"{name} has {len(value)} entries for {n} episode_ids")
        with state.lock:
            obs, infos = state.reset(
                token, body.episode_ids, body.seeds or [None] * n, body.env_indices, body.reset_counters
            )
        return {"observations": obs, "infos": infos}

    @app.post("/api/v1/episode/vectorized_step")
    def vectorized_step(body: VectorizedStep, token: Token) -> dict:
        with state.lock:
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
        }

    @app.post("/api/v1/episode/reset")
    def reset_episode(body: SingleReset, token: Token) -> dict:
        with state.lock:
            obs, infos = state.reset(token, [body.episode_id], [body.seed], None, None)
        return {"observation": obs[0], "info": infos[0]}

    @app.post("/api/v1/episode/step")
    def step_episode(body: SingleStep, token: Token) -> dict:
        with state.lock:
            (r,) = state.step(token, [body.model_dump()])
        return {
            "observation": _observation(r["rows"], body.return_all_states),
            "reward": r["reward"],
            "terminated": r["terminated"],
            "truncated": r["truncated"],
            "step": r["info"]["step"],
            "info": r["info"],
        }

    @app.get("/api/v1/episode/{episode_id}")
    def episode_info(episode_id: str, token: Token) -> dict:
        with state.lock:
            return state.episode_info(token, episode_id)

    @app.get("/api/v1/episode/{episode_id}/state/latest")
    def latest_state(episode_id: str, token: Token) -> dict:
        with state.lock:
            info = state.episode_info(token, episode_id)
        return {k: info[k] for k in ("episode_id", "step", "terminated", "truncated", "total_reward")}

    return app

"""The reference server: a FastAPI app of the challenge's protocol (docs/protocol.md) over one
`ServerState`. Its routes are `server.routes` (one router per concern), their bodies
`server.models`; this module assembles them with the guards every request passes first."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch_student_env.adapters import require

require("fastapi", "server")
require("orjson", "server")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.openapi.utils import get_openapi  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from torch_student_env.server.config import Limits, display_names, load_tokens  # noqa: E402
from torch_student_env.server.errors import ServerError  # noqa: E402
from torch_student_env.server.guard import GuardBodies  # noqa: E402
from torch_student_env.server.models import REQUEST_MODELS, Invalid, Rejected, publish_limits  # noqa: E402
from torch_student_env.server.routes import PROTOCOL_VERSION, ROUTERS  # noqa: E402
from torch_student_env.server.state import ServerState  # noqa: E402
from torch_student_env.server.store import ScoreStore  # noqa: E402
from torch_student_env.sim.params import SimParams  # noqa: E402

log = logging.getLogger("torch_student_env.server")


def _exact_openapi(app: FastAPI, models: tuple[type[BaseModel], ...], limits: Limits) -> None:
    """Publish the models' schemas exactly as pydantic writes them, with this server's `limits`.

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
            publish_limits(schema, limits)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    tokens: set[str] | dict[str, str] | None = None,
    limits: Limits | None = None,
    params: SimParams | None = None,
    expose_health: bool = True,
    db: str | Path = ":memory:",
    durable: bool = False,
) -> FastAPI:
    """A FastAPI app serving the embedded simulator over the challenge protocol.

    Finished episodes and display names are kept in the SQLite file `db` (`server.store`);
    the default, ":memory:", keeps them for the life of the process (tests, notebooks). A file
    that cannot be written raises `StoreError` here, before the server takes a request.
    `durable` adds an fsync per commit, so that a power cut loses nothing either (`ScoreStore`).
    """
    limits = limits or Limits()
    store = ScoreStore(db, keep_per_token=limits.scored_episodes_per_token, durable=durable)
    state = ServerState(limits, params, expose_health, store)
    app = FastAPI(title="torch_student_env reference server", version=PROTOCOL_VERSION)
    app.state.server = state
    app.state.tokens = display_names(tokens) if tokens is not None else load_tokens()
    store.set_names(app.state.tokens)

    for router in ROUTERS:
        app.include_router(router)
    _exact_openapi(app, (*REQUEST_MODELS, Rejected, Invalid), state.limits)
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

    return app

"""Fault matrix: what the remote env does under each network or server fault.

    python scripts/faults.py            # prints the Markdown table of docs/reliability.md

Each row runs a remote env of 2 engines against a reference server on 127.0.0.1 (a free port),
beside a local twin given the same actions: reset, one clean step, then the fault on the next
call of one endpoint, then two more steps. The outcome column says what the client did; the
"after" column says whether every TensorDict it returned matched the twin's (or, if it
raised, which named error and how long it took). Needs the [server] extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable

import torch

from torch_student_env import make_env
from torch_student_env.server import create_app, running_server, server_process

API = "/api/v1"
TOKEN = "faults"
CLIENT = dict(backoff=0.05, max_retries=3, timeout=1.0)


class Injector:
    """Middleware state: `fault(request, call_next)` is applied to the next call of `path`."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.fault: Callable | None = None

    def arm(self, path: str, fault: Callable) -> None:
        self.path, self.fault = API + path, fault

    def install(self, app) -> None:
        @app.middleware("http")
        async def inject(request, call_next):
            path = request.url.path
            hit = path.startswith(self.path) if self.path and self.path.endswith("/") else path == self.path
            if self.fault is None or not hit or (path == API + "/session/create" and request.method == "DELETE"):
                return await call_next(request)
            fault, self.fault = self.fault, None  # once
            return await fault(request, call_next)


async def refuse_503(request, call_next):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": "overloaded"}, 503)


async def lose_answer(request, call_next):
    from fastapi.responses import JSONResponse

    await call_next(request)  # the server did the work; the answer never arrives
    return JSONResponse({"detail": "bad gateway"}, 502)


async def truncate(request, call_next):
    from fastapi.responses import Response

    await call_next(request)
    return Response('{"observations": [[1.0, 2.', media_type="application/json")


async def delay_past_timeout(request, call_next):
    await asyncio.sleep(2 * CLIENT["timeout"])  # a delaying proxy: the client gives up first
    return await call_next(request)


async def delay_within_timeout(request, call_next):
    await asyncio.sleep(CLIENT["timeout"] / 4)
    return await call_next(request)


async def slow_drip(request, call_next):
    from fastapi.responses import StreamingResponse

    await call_next(request)

    async def drip():
        for _ in range(100):
            yield b" "
            await asyncio.sleep(0.1)  # 10 bytes/s: every read succeeds, the whole answer never comes

    return StreamingResponse(drip(), media_type="application/json")


def _run(env, twin, steps: int) -> bool:
    same = True
    for _ in range(steps):
        actions = torch.tensor([0, 2]) if torch.rand(()) < 0.3 else torch.tensor([1, 0])
        same &= bool((env.step(actions) == twin.step(actions)).all())
    return same


def in_process(path: str, fault: Callable, when: str) -> tuple[str, str]:
    """One fault on the next call of `path`; `when` is "create", "reset", "step" or "close"."""
    injector = Injector()
    app = create_app(tokens={TOKEN})
    injector.install(app)
    with running_server(app) as url:
        t0 = time.monotonic()
        try:
            if when == "create":
                injector.arm(path, fault)
            env = make_env(num_envs=2, seed=3, backend="remote", server_url=url, user_token=TOKEN, **CLIENT)
            twin = make_env(num_envs=2, seed=3)
            if when == "reset":
                injector.arm(path, fault)
            same = bool((env.reset() == twin.reset()).all())
            same &= _run(env, twin, 1)
            if when == "step":
                injector.arm(path, fault)
            same &= _run(env, twin, 3)
            if when == "close":
                injector.arm(path, fault)
            env.close()
        except Exception as err:  # noqa: BLE001 - the outcome is the point
            return f"raises `{type(err).__name__}` after {time.monotonic() - t0:.1f} s", _first_line(err)
        return "recovers", "identical to the twin" if same else "**differs from the twin**"


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:110].replace("|", "/")


def killed(restart: bool) -> tuple[str, str]:
    """`kill -9` of the server process between two steps; optionally restarted on the same port."""
    with server_process([TOKEN]) as server:
        env = make_env(num_envs=2, seed=3, backend="remote", server_url=server.url, user_token=TOKEN, **CLIENT)
        twin = make_env(num_envs=2, seed=3)
        env.reset(), twin.reset()
        _run(env, twin, 1)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    with server_process([TOKEN], port=server.port) if restart else contextlib.nullcontext():
        t0 = time.monotonic()
        try:
            _run(env, twin, 1)
        except Exception as err:  # noqa: BLE001 - the outcome is the point
            return f"raises `{type(err).__name__}` after {time.monotonic() - t0:.1f} s", _first_line(err)
        return "recovers", "**no error raised**"


def matrix() -> list[tuple[str, str, str]]:
    rows = []
    for name, path, when in [
        ("session/create", "/session/create", "create"),
        ("vectorized/episodes/create", "/vectorized/episodes/create", "create"),
        ("vectorized_reset", "/episode/vectorized_reset", "reset"),
        ("vectorized_step", "/episode/vectorized_step", "step"),
        ("DELETE session", "/session/", "close"),
    ]:
        rows.append((f"503 on `{name}`", *in_process(path, refuse_503, when)))
    rows.append(("answer lost after the step (502)", *in_process("/episode/vectorized_step", lose_answer, "step")))
    rows.append(("answer lost after the reset (502)", *in_process("/episode/vectorized_reset", lose_answer, "reset")))
    rows.append(("truncated body on a step", *in_process("/episode/vectorized_step", truncate, "step")))
    rows.append(("delaying proxy, within the timeout", *in_process("/episode/vectorized_step", delay_within_timeout,
                                                                   "step")))  # fmt: skip
    rows.append(("delaying proxy, past the timeout", *in_process("/episode/vectorized_step", delay_past_timeout,
                                                                 "step")))  # fmt: skip
    rows.append(("slow-drip answer (10 bytes/s)", *in_process("/episode/vectorized_step", slow_drip, "step")))
    rows.append(("`kill -9` of the server", *killed(restart=False)))
    rows.append(("server killed and restarted", *killed(restart=True)))
    return rows


def main() -> int:
    print(f"client: timeout {CLIENT['timeout']} s, {CLIENT['max_retries']} retries, backoff {CLIENT['backoff']} s\n")
    print("| fault | what the client does | after |")
    print("|---|---|---|")
    for fault, outcome, after in matrix():
        print(f"| {fault} | {outcome} | {after} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

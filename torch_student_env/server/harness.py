"""Running a reference server for a while: in a background thread (`running_server`: tests,
notebooks) or in its own process (`server_process`: benchmarks, soak and fault runs, with their
own interpreter, GIL and memory); both stop it on exit."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@contextlib.contextmanager
def running_server(app=None, host: str = "127.0.0.1", port: int = 0, **app_kwargs) -> Iterator[str]:
    """Serve `app` (or `create_app(**app_kwargs)`) on host:port in a thread; yields its URL.

    `port=0` picks a free port. The server is shut down when the block exits.
    """
    import uvicorn

    if app is None:
        from torch_student_env.server.app import create_app  # the [server] extra, when an app is made

        app = create_app(**app_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the reference server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class ServerProcess:
    """A reference server running as a subprocess: its URL and its process (to measure or kill)."""

    url: str
    process: subprocess.Popen
    port: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(tokens: list[str], *flags: str, port: int = 0, timeout: float = 240.0) -> Iterator[ServerProcess]:
    """`python -m torch_student_env.server` on 127.0.0.1 accepting `tokens`, until the block exits.

    `port=0` picks a free port; `flags` are extra command-line options of the server (scores
    are kept in memory unless they name a `--db` file). The server opens its port in seconds even
    on a cold cache: its groups' compiled step builds in the background (`fast_path`).
    """
    port = port or free_port()
    if "--db" not in flags:  # scores in memory unless asked: a test never leaves a file behind
        flags = (*flags, "--db", ":memory:")
    command = [sys.executable, "-m", "torch_student_env.server", "--host", "127.0.0.1", "--port", str(port), *flags]
    env = dict(os.environ, STUDENT_ENV_TOKENS=",".join(tokens))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"the server exited with code {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start on port {port} within {timeout:.0f} s") from None
                time.sleep(0.1)  # polling the start, not timing anything
        yield ServerProcess(f"http://127.0.0.1:{port}", process, port)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)

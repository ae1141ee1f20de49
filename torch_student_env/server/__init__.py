"""Reference server of the challenge protocol, running the embedded simulator ([server] extra).

    python -m torch_student_env.server --host 127.0.0.1 --port 8001
    torch-student-env-serve --tokens-file tokens.txt

`running_server()` starts one in a background thread (tests, notebooks) and stops it on exit.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from torch_student_env.server.state import Limits


def create_app(*args, **kwargs):
    """The FastAPI app (see `server.app.create_app`); imported lazily so the core needs no FastAPI."""
    from torch_student_env.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


@contextlib.contextmanager
def running_server(app=None, host: str = "127.0.0.1", port: int = 0, **app_kwargs) -> Iterator[str]:
    """Serve `app` (or `create_app(**app_kwargs)`) on host:port in a thread; yields its URL.

    `port=0` picks a free port. The server is shut down when the block exits.
    """
    import uvicorn

    app = app if app is not None else create_app(**app_kwargs)
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


__all__ = ["Limits", "create_app", "running_server"]

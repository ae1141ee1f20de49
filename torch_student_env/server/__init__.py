"""Reference server of the challenge protocol, running the embedded simulator ([server] extra).

    python -m torch_student_env.server --host 127.0.0.1 --port 8001
    torch-student-env-serve --tokens-file tokens.txt

`running_server()` starts one in a background thread (tests, notebooks) and `server_process()`
in its own process (benchmarks, soak and fault runs: its own interpreter, GIL and memory); both
stop it on exit.
"""

from __future__ import annotations

from torch_student_env.server.config import Limits
from torch_student_env.server.harness import ServerProcess, free_port, running_server, server_process


def create_app(*args, **kwargs):
    """The FastAPI app (see `server.app.create_app`); imported lazily so the core needs no FastAPI."""
    from torch_student_env.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["Limits", "ServerProcess", "create_app", "free_port", "running_server", "server_process"]

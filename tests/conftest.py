"""Shared fixtures: the env contract suite runs over every backend through `env_factory`."""

from __future__ import annotations

import pytest
from helpers import TOKEN_A, TOKEN_B

from torch_student_env import make_env

BACKENDS = ["local", "remote"]


def _have_server_extra() -> bool:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def server_url():
    """A reference server on 127.0.0.1 (free port) for the whole test session."""
    if not _have_server_extra():
        pytest.skip("remote-backend tests need the [server] extra (fastapi, uvicorn)")
    from torch_student_env.server import Limits, running_server

    limits = Limits(max_sessions_per_token=100_000, max_envs_per_token=1 << 20)  # the suite opens many envs
    with running_server(tokens={TOKEN_A, TOKEN_B, "your_token"}, limits=limits) as url:
        yield url


@pytest.fixture(params=BACKENDS)
def env_factory(request):
    """`factory(**make_env_kwargs)` for one backend; envs are closed after the test."""
    made = []
    remote = {}
    if request.param == "remote":
        remote = {"server_url": request.getfixturevalue("server_url"), "user_token": TOKEN_A}

    def factory(**kwargs):
        env = make_env(backend=request.param, **remote, **kwargs)
        made.append(env)
        return env

    factory.backend = request.param
    yield factory
    for env in made:
        env.close()

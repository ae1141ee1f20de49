"""Shared fixtures: the env contract suite runs over every backend through `env_factory`."""

from __future__ import annotations

import pytest
import torch

from torch_student_env import make_env

BACKENDS = ["local", "remote"]
TOKEN_A, TOKEN_B = "token-a", "token-b"


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


def const_actions(n: int, action: int) -> torch.Tensor:
    """(n,) int64 tensor filled with one action."""
    return torch.full((n,), action, dtype=torch.int64)


def snapshot(env) -> dict:
    """A flat copy of every tensor in env.state_dict(), for bit-identity checks."""
    flat: dict = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value.clone()
        else:
            flat[prefix] = value

    walk("", env.state_dict())
    return flat


def assert_same_snapshot(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k

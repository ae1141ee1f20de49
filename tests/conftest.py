"""Shared fixtures: the env contract suite runs over every backend through `env_factory`."""

from __future__ import annotations

import os

import pytest
from helpers import TOKEN_A, TOKEN_B

from torch_student_env import make_env

# Envs the tests make without fast= step eagerly: each compiled configuration is a one-off
# compile of ~30 s on a cold cache. The tests that run the compiled step ask for it (fast=True,
# the "fast" path below), and test_fast_path holds it equal to eager; the default itself is
# tested there with this variable unset. Subprocesses (examples, servers) inherit it.
os.environ.setdefault("TORCH_STUDENT_ENV_FAST", "0")
# ... and the envs that do compile wait for their library, so that a "fast" test runs the compiled
# step from its first step instead of eagerly while it builds (test_fast_path tests the build in
# the background with this unset).
os.environ.setdefault("TORCH_STUDENT_ENV_WAIT_COMPILED", "1")

# Under pytest-xdist (the README's command: one worker per core), each worker is a process of its
# own: one intra-op thread each, or the workers' threads would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)

# the contract suite runs over the three ways a step is computed: the embedded simulator eager
# and compiled (one torch.compile graph), and the remote backend against the reference server
PATHS = ["eager", "fast", "remote"]


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


def pytest_generate_tests(metafunc):
    """The contract modules (`CONTRACT = True`) run over every path; the others over eager and
    remote, since each fast configuration is a one-off compile of ~30 s on a cold cache."""
    if "env_factory" in metafunc.fixturenames:
        paths = PATHS if getattr(metafunc.module, "CONTRACT", False) else ["eager", "remote"]
        metafunc.parametrize("env_factory", paths, indirect=True)


def pytest_collection_modifyitems(items):
    """Tests that compile a step run on one xdist worker (`--dist loadgroup`): each compiled
    configuration is then compiled once, on a cold cache, instead of once per worker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        fast = callspec is not None and (callspec.params.get("env_factory") == "fast" or callspec.params.get("fast"))
        if fast or item.get_closest_marker("compiles"):
            item.add_marker(pytest.mark.xdist_group("compiled"))


@pytest.fixture
def env_factory(request):
    """`factory(**make_env_kwargs)` for one path (eager, fast, remote); envs are closed after the test."""
    made = []
    options = {"backend": "local", "fast": request.param == "fast"}
    if request.param == "remote":
        options = {"backend": "remote", "server_url": request.getfixturevalue("server_url"), "user_token": TOKEN_A}

    def factory(**kwargs):
        env = make_env(**(options | kwargs))
        made.append(env)
        return env

    factory.backend, factory.path = options["backend"], request.param
    yield factory
    for env in made:
        env.close()

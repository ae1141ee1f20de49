"""The remote backend against faulty and misbehaving servers: named errors, retries, exactly-once steps, resume."""

from __future__ import annotations

import socket

import pytest
import torch

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")

from fastapi.responses import JSONResponse, PlainTextResponse  # noqa: E402
from helpers import API, TOKEN_A, TOKEN_B, api_get  # noqa: E402

from torch_student_env import make_env  # noqa: E402
from torch_student_env.backends.remote import (  # noqa: E402
    AuthenticationError,
    NotFoundError,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    StepNotRetried,
)
from torch_student_env.server import create_app, free_port, running_server  # noqa: E402


def test_client_errors_name_the_cause(server_url):
    with pytest.raises(AuthenticationError, match="unknown User-Token"):
        make_env(num_envs=2, backend="remote", server_url=server_url, user_token="intruder")
    env = make_env(num_envs=2, backend="remote", server_url=server_url, user_token=TOKEN_A, seed=0)
    env.reset()
    with pytest.raises(NotFoundError, match="not found"):
        make_env(
            num_envs=2,
            backend="remote",
            server_url=server_url,
            user_token=TOKEN_B,
            episode_ids=env.backend.episode_ids,
            session_id=env.backend.session_id,
        )


# -- faults -----------------------------------------------------------------------------------
class Faults:
    """Middleware state: what to do to the next calls of one path."""

    def __init__(self, path: str, plan: list[str]) -> None:
        self.path, self.plan, self.handled = path, list(plan), 0

    def install(self, app) -> None:
        @app.middleware("http")
        async def inject(request, call_next):
            if request.url.path != API + self.path or not self.plan:
                return await call_next(request)
            what = self.plan.pop(0)
            if what == "503-before":  # refused before the handler ran
                return JSONResponse({"detail": "overloaded"}, 503)
            response = await call_next(request)
            self.handled += 1
            if what == "lost-after":  # the step happened, the answer never arrived
                return JSONResponse({"detail": "bad gateway"}, 502)
            if what == "garbage-after":
                return PlainTextResponse('{"observations": [[1.0, 2.', 200)
            return response


def _local_twin(n, seed):
    env = make_env(num_envs=n, seed=seed)
    env.reset()
    return env


@pytest.mark.parametrize(
    "plan", [["lost-after"], ["503-before", "503-before"], ["garbage-after"], ["lost-after", "503-before"]]
)
def test_retried_step_advances_exactly_once(plan):
    faults = Faults("/episode/vectorized_step", [])
    app = create_app(tokens={TOKEN_A})
    faults.install(app)
    with running_server(app) as url:
        env = make_env(num_envs=3, seed=4, backend="remote", server_url=url, user_token=TOKEN_A, backoff=0.01)
        twin = _local_twin(3, 4)
        env.reset()
        assert torch.equal(env.step([0, 0, 0])["observation"], twin.step([0, 0, 0])["observation"])
        faults.plan = list(plan)
        td = env.step([0, 1, 0])
        expected = twin.step([0, 1, 0])
        assert (td == expected).all()  # same rows, same reward: the engines moved once
        info = api_get(url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A)
        assert info.json()["step"] == 20 and info.json()["step_counter"] == 2
        assert (env.step([0, 0, 0]) == twin.step([0, 0, 0])).all()


@pytest.mark.parametrize("plan", [[], ["lost-after"], ["lost-after", "503-before"]])
def test_step_and_its_auto_reset_are_one_exactly_once_unit(plan):
    """A sale's step restarts the engine in the same request: a broken reset endpoint loses
    nothing, and a step whose answer was lost, retried, neither steps nor resets twice."""
    app = create_app(tokens={TOKEN_A})
    broken_reset = Faults("/episode/vectorized_reset", [])
    step_faults = Faults("/episode/vectorized_step", [])
    broken_reset.install(app), step_faults.install(app)
    with running_server(app) as url:
        env = make_env(num_envs=2, seed=6, backend="remote", server_url=url, user_token=TOKEN_A, backoff=0.01)
        twin = _local_twin(2, 6)
        env.reset()
        broken_reset.plan = ["503-before"] * 50  # from now on every reset request would fail
        step_faults.plan = list(plan)
        td, expected = env.step([2, 0]), twin.step([2, 0])
        assert (td == expected).all() and td["done"].tolist() == [True, False]
        assert td["episode_return"][0] == 150.0 and td["flight"][0].tolist() == [-1] * 9 + [0]
        for _ in range(3):
            assert (env.step([0, 0]) == twin.step([0, 0])).all()
        assert broken_reset.handled == 0  # the reset endpoint was never needed
        info = api_get(url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A).json()
        assert info["reset_counter"] == 2 and info["step"] == 30  # reset once by the step, then 3 steps


@pytest.mark.parametrize("path", ["/session/create", "/vectorized/episodes/create"])
def test_a_transient_failure_while_creating_is_retried(path):
    """A 503 at start-up does not end the run: creates are retried (an orphan they might leave is
    bounded by the server's limits), and the env then matches its twin."""
    app = create_app(tokens={TOKEN_A})
    faults = Faults(path, ["503-before", "503-before"])
    faults.install(app)
    with running_server(app) as url:
        env = make_env(num_envs=2, seed=9, backend="remote", server_url=url, user_token=TOKEN_A, backoff=0.01)
        assert not faults.plan  # both failures were met, and retried
        twin = make_env(num_envs=2, seed=9)
        assert (env.reset() == twin.reset()).all()
        assert (env.step([0, 2]) == twin.step([0, 2])).all()
        env.close()


def test_server_without_step_counters_never_retries_steps():
    app = create_app(tokens={TOKEN_A})
    faults = Faults("/episode/vectorized_step", ["503-before"])
    faults.install(app)

    @app.middleware("http")
    async def old_version(request, call_next):  # a server that advertises no features
        if request.url.path == API + "/version":
            return JSONResponse({"latest_version": "0.1"})
        return await call_next(request)

    with running_server(app) as url:
        env = make_env(num_envs=2, backend="remote", server_url=url, user_token=TOKEN_A, backoff=0.01)
        env.reset()
        before = env.backend.state_dict()
        with pytest.raises(StepNotRetried, match="not retried") as err:
            env.step([0, 0])
        assert all(e in str(err.value) for e in env.backend.episode_ids)
        assert faults.handled == 0 and not faults.plan
        assert torch.equal(env.backend.state_dict()["counters"], before["counters"])


def test_server_restart_and_unreachable_server_raise_clearly():
    port = free_port()
    with running_server(port=port, tokens={TOKEN_A}) as url:
        env = make_env(num_envs=2, backend="remote", server_url=url, user_token=TOKEN_A, backoff=0.01, max_retries=2)
        env.reset()
        env.step([0, 0])
    # the server is gone: retries, then a clear error (not a fake termination)
    with pytest.raises(ServerUnavailable, match="after 3 attempts"):
        env.step([0, 0])
    with running_server(port=port, tokens={TOKEN_A}):  # restarted: it forgot every episode
        with pytest.raises(NotFoundError, match="server restarted"):
            env.step([0, 0])
    with pytest.raises(ServerUnavailable, match="ConnectionError"):
        make_env(
            num_envs=1, backend="remote", server_url=f"http://127.0.0.1:{free_port()}", max_retries=1, backoff=0.01
        )


def test_resume_by_ids_and_no_rewind(server_url):
    env = make_env(num_envs=2, seed=8, backend="remote", server_url=server_url, user_token=TOKEN_A)
    env.reset()
    env.step([0, 0])
    saved = env.state_dict()
    env.step([0, 0])
    with pytest.raises(NotImplementedError, match="cannot be rewound"):
        env.load_state_dict(saved)
    # a new client attaches to the same episodes and continues their step counters
    again = make_env(
        num_envs=2,
        seed=8,
        backend="remote",
        server_url=server_url,
        user_token=TOKEN_A,
        episode_ids=env.backend.episode_ids,
        session_id=env.backend.session_id,
    )
    twin = _local_twin(2, 8)
    for _ in range(2):  # the two steps the first client took
        twin.step([0, 0])
    again.load_state_dict(env.state_dict())
    assert (again.step([0, 0])["reward"] == twin.step([0, 0])["reward"]).all()
    # the old client's counter 3 was already used: it gets the stored answer, the engine does not move
    env.step([0, 0])
    info = api_get(server_url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A)
    assert info.json()["step"] == 30
    env.step([0, 0]), env.step([0, 0])  # counters 4 and 5 are new: real steps
    with pytest.raises(RequestRejected, match="step_counter 4, expected 6"):
        again.step([0, 0])  # `again` is two steps behind: refused, never applied


class _RawServer:
    """A misbehaving HTTP server on 127.0.0.1: `answer(conn)` writes whatever it likes."""

    def __init__(self, answer):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer, self.stop = answer, threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                try:
                    self.answer(conn, self.stop)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def _drip(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b" ")  # one byte at a time, forever


def _truncated(conn, stop):
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"latest_')


def _wrong_shape(conn, stop):
    body = b'["not", "an", "object"]'
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize(
    "answer, error, message",
    [
        (_drip, ServerUnavailable, "did not arrive within the timeout"),
        (_truncated, ServerUnavailable, "failed after 2 attempts"),
        (_wrong_shape, ProtocolError, "not a JSON object"),
    ],
)
def test_misbehaving_servers_raise_named_errors_within_the_deadline(answer, error, message):
    import time

    server = _RawServer(answer)
    try:
        start = time.monotonic()
        with pytest.raises(error, match=message):
            make_env(num_envs=1, backend="remote", server_url=server.url, timeout=1.0, max_retries=1, backoff=0.01)
        assert time.monotonic() - start < 5.0  # 2 attempts of at most ~1.25 s each, not forever
    finally:
        server.close()


def test_malformed_step_answer_is_a_protocol_error_not_a_key_error(server_url):
    app = create_app(tokens={TOKEN_A})

    @app.middleware("http")
    async def strip_rewards(request, call_next):
        if request.url.path == API + "/episode/vectorized_step":
            await call_next(request)
            return JSONResponse({"observations": [[]], "terminateds": [False]})  # no rewards, no infos
        return await call_next(request)

    with running_server(app) as url:
        env = make_env(num_envs=1, backend="remote", server_url=url, user_token=TOKEN_A)
        env.reset()
        with pytest.raises(ProtocolError, match="does not follow the protocol"):
            env.step([0])

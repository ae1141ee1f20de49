"""The challenge protocol end to end on 127.0.0.1: conformance, security, faults, seed-client compat."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")

from fastapi.responses import JSONResponse, PlainTextResponse  # noqa: E402
from helpers import TOKEN_A, TOKEN_B  # noqa: E402

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

API = "/api/v1"


def _post(url, path, token=TOKEN_A, **kwargs):
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["User-Token"] = token
    return requests.post(url + API + path, headers=headers, timeout=10, **kwargs)


def _get(url, path, token=TOKEN_A):
    return requests.get(url + API + path, headers={"User-Token": token}, timeout=10)


def _group(url, n, token=TOKEN_A, **env_config):
    sid = _post(url, "/session/create", token).json()["session_id"]
    body = {"num_envs": n, "env_config": {"step_size": 10, **env_config}}
    r = _post(url, "/vectorized/episodes/create", token, headers={"Session-ID": sid}, json=body)
    assert r.status_code == 200, r.text
    return sid, r.json()["episode_ids"]


# -- protocol conformance ---------------------------------------------------------------------
def test_every_endpoint_shapes(server_url):
    v = requests.get(server_url + API + "/version", timeout=10)
    assert v.status_code == 200 and "latest_version" in v.json() and "step_counter" in v.json()["features"]
    sid, ids = _group(server_url, 3, max_steps_per_episode=15)
    assert len(ids) == 3 and len(set(ids)) == 3
    r = _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2, None]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["observations"]) == 3 and all(len(o) == 9 for o in body["observations"])
    assert [i["episode_id"] for i in body["infos"]] == ids

    step = {
        "episode_actions": [
            {"episode_id": e, "action": a, "step_size": 10} for e, a in zip(ids, [0, 2, 0], strict=True)
        ]
    }
    r = _post(server_url, "/episode/vectorized_step", json=step)
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"observations", "rewards", "terminateds", "truncateds", "infos"}
    # ragged: a sale flies one row, as on the challenge's server; the others fly 10
    assert [len(o) for o in body["observations"]] == [10, 1, 10]
    assert all(len(row) == 9 for row in body["observations"][0])
    assert body["terminateds"] == [False, True, False] and body["infos"][1]["reason"] == "sold"
    # the 15-flight limit ends the next step mid-window: 5 rows, truncated; the sold episode
    # starts its next episode first (auto_reset, the client's default) and flies 10 flights
    step["episode_actions"][1]["action"] = 0
    body = _post(server_url, "/episode/vectorized_step", json=step).json()
    assert [len(o) for o in body["observations"]] == [5, 10, 5]
    assert body["truncateds"] == [True, False, True] and body["rewards"][1] > 0
    assert body["infos"][1]["step"] == 10 and body["infos"][1]["total_reward"] == body["rewards"][1]
    # return_all_states=False: one row per episode
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})
    flat = {"episode_actions": [{"episode_id": e, "action": 0, "return_all_states": False} for e in ids]}
    body = _post(server_url, "/episode/vectorized_step", json=flat).json()
    assert all(len(o) == 9 and isinstance(o[0], float) for o in body["observations"])

    info = _get(server_url, f"/episode/{ids[0]}", TOKEN_A)
    assert info.status_code == 200 and info.json()["step"] == 10 and info.json()["episode_id"] == ids[0]
    latest = _get(server_url, f"/episode/{ids[0]}/state/latest", TOKEN_A)
    assert latest.json()["step"] == 10 and latest.json()["terminated"] is False
    assert latest.json()["observation"] == body["observations"][0]  # the newest row, as restored


def test_sessions_are_released_by_close_and_by_delete(tmp_path):
    """Hundreds of create -> close cycles on one token under the default limit (16 sessions)."""
    from torch_student_env.server.state import Limits

    app = create_app(tokens={TOKEN_A, TOKEN_B}, limits=Limits())
    with running_server(app) as url:
        for k in range(200):
            env = make_env(num_envs=2, backend="remote", server_url=url, user_token=TOKEN_A, seed=k)
            env.reset()
            env.step(torch.tensor([0, 2]))
            env.close()
            env.close()  # idempotent
        assert len(app.state.server.sessions) == 0 and len(app.state.server.episodes) == 0
        sid = _post(url, "/session/create", TOKEN_A).json()["session_id"]
        gone = requests.delete(f"{url}{API}/session/{sid}", headers={"User-Token": TOKEN_B}, timeout=10)
        assert gone.status_code == 404  # another token's session does not exist for you
        ok = requests.delete(f"{url}{API}/session/{sid}", headers={"User-Token": TOKEN_A}, timeout=10)
        assert ok.status_code == 200 and sid not in app.state.server.sessions
        # past the limit, a token's least recently used session is released, never the request refused
        sids = [
            _post(url, "/session/create", TOKEN_B).json()["session_id"]
            for _ in range(Limits().max_sessions_per_token + 3)
        ]
        assert set(app.state.server.sessions) == set(sids[3:])
        # the score counts what the closed envs finished: 200 sales (the last 100 by default)
        score = requests.get(f"{url}{API}/user/{TOKEN_A}/score", params={"limit": 1000}, timeout=10).json()
        assert score["metrics"]["total_episodes"] == 200


def test_finished_episode_without_auto_reset_flies_nothing(server_url):
    _, ids = _group(server_url, 2, auto_reset=False)
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})
    sell = {"episode_actions": [{"episode_id": e, "action": a} for e, a in zip(ids, [2, 0], strict=True)]}
    assert _post(server_url, "/episode/vectorized_step", json=sell).json()["terminateds"] == [True, False]
    body = _post(server_url, "/episode/vectorized_step", json=sell).json()
    assert [len(o) for o in body["observations"]] == [0, 10] and body["rewards"][0] == 0.0
    assert body["terminateds"][0] is True and "reset it" in body["infos"][0]["message"]


def test_single_episode_endpoints(server_url):
    sid = _post(server_url, "/session/create").json()["session_id"]
    r = _post(
        server_url,
        "/episode/create",
        headers={"Session-ID": sid},
        json={"max_steps_per_episode": 1000, "step_size": 10},
    )
    episode_id = r.json()["episode_id"]
    assert len(r.json()["initial_observation"]) == 9  # the single-env client reads it
    r = _post(server_url, "/episode/reset", json={"episode_id": episode_id, "seed": 3})
    assert len(r.json()["observation"]) == 9
    r = _post(server_url, "/episode/step", json={"episode_id": episode_id, "action": 0, "step_size": 7})
    body = r.json()
    assert len(body["observation"]) == 7 and body["step"] == 7 and body["terminated"] is False
    assert isinstance(body["reward"], float) and body["info"]["episode_id"] == episode_id


# -- security and validation ------------------------------------------------------------------
def test_tokens_and_isolation(server_url):
    assert _post(server_url, "/session/create", token=None).status_code == 401
    r = _post(server_url, "/session/create", token="intruder")
    assert r.status_code == 401 and "User-Token" in r.json()["detail"]
    sid, ids = _group(server_url, 2)
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})
    # token B sees nothing of token A's
    step = {"episode_actions": [{"episode_id": ids[0], "action": 0}]}
    assert _post(server_url, "/episode/vectorized_step", TOKEN_B, json=step).status_code == 404
    assert _post(server_url, "/episode/vectorized_reset", TOKEN_B, json={"episode_ids": ids}).status_code == 404
    r = _get(server_url, f"/episode/{ids[0]}", TOKEN_B)
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    r = _post(server_url, "/vectorized/episodes/create", TOKEN_B, headers={"Session-ID": sid}, json={"num_envs": 1})
    assert r.status_code == 404
    # and A's episode did not move
    assert _post(server_url, "/episode/vectorized_step", json=step).json()["infos"][0]["step"] == 10


@pytest.mark.parametrize(
    "path,body,status,detail",
    [
        (
            "/episode/vectorized_step",
            {"episode_actions": [{"episode_id": "x", "action": 0, "step_size": 51}]},
            422,
            "step_size",
        ),
        ("/episode/vectorized_step", {"episode_actions": [{"episode_id": "x", "action": "1"}]}, 422, "action"),
        ("/episode/vectorized_step", {"episode_actions": [{"episode_id": "x", "action": 3}]}, 422, "action"),
        ("/episode/vectorized_step", {"episode_actions": []}, 422, "episode_actions"),
        ("/episode/vectorized_reset", {"episode_ids": "abc"}, 422, "episode_ids"),
        ("/vectorized/episodes/create", {"num_envs": 10_000}, 422, "num_envs"),
        ("/vectorized/episodes/create", {"num_envs": 2.5}, 422, "num_envs"),
    ],
)
def test_bad_requests_get_4xx_with_detail(server_url, path, body, status, detail):
    sid = _post(server_url, "/session/create").json()["session_id"]
    r = _post(server_url, path, headers={"Session-ID": sid}, json=body)
    assert r.status_code == status
    assert detail in str(r.json()["detail"])


def test_one_token_holds_a_bounded_number_of_engines():
    """Memory per token is bounded: past `max_envs_per_token` a create is refused (429) and
    changes nothing; another token is unaffected, and releasing a session frees its engines."""
    from torch_student_env.server.state import Limits

    app = create_app(tokens={TOKEN_A, TOKEN_B}, limits=Limits(max_envs_per_token=6))
    with running_server(app) as url:
        first, _ = _group(url, 4)
        sid = _post(url, "/session/create").json()["session_id"]
        body = {"num_envs": 3}
        refused = _post(url, "/vectorized/episodes/create", headers={"Session-ID": sid}, json=body)
        assert refused.status_code == 409 and "would hold 7 envs (limit 6)" in refused.json()["detail"]
        assert len(app.state.server.episodes) == 4 and app.state.server.sessions[sid].envs == 0
        _group(url, 6, TOKEN_B)  # another token has its own budget
        assert requests.delete(f"{url}{API}/session/{first}", headers={"User-Token": TOKEN_A}, timeout=10).ok
        made = _post(url, "/vectorized/episodes/create", headers={"Session-ID": sid}, json=body)
        assert made.status_code == 200 and len(made.json()["episode_ids"]) == 3


def test_one_request_touches_a_bounded_number_of_episodes():
    from torch_student_env.server.state import Limits

    app = create_app(tokens={TOKEN_A}, limits=Limits(max_envs_per_request=4))
    with running_server(app) as url:
        ids = _group(url, 4)[1] + _group(url, 4)[1]
        _post(url, "/episode/vectorized_reset", json={"episode_ids": ids[:4]})
        r = _post(url, "/episode/vectorized_reset", json={"episode_ids": ids})
        assert r.status_code == 422 and "8 episodes in one request (limit 4)" in r.json()["detail"]
        step = {"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
        r = _post(url, "/episode/vectorized_step", json=step)
        assert r.status_code == 422 and "limit 4" in r.json()["detail"]
        assert all(_get(url, f"/episode/{e}").json()["step"] == 0 for e in ids)  # nothing moved


def test_a_long_step_never_stalls_other_groups_or_tokens():
    """Each group has its own lock: while one group's step is held inside the simulator, another
    token, and the same token's other group, are served. (With one global lock, the requests
    below would wait for the held step, and their timeout would fail the test.)"""
    import threading

    app = create_app(tokens={TOKEN_A, TOKEN_B})
    with running_server(app) as url:
        _, slow_ids = _group(url, 2)
        _post(url, "/episode/vectorized_reset", json={"episode_ids": slow_ids})
        group = app.state.server.episodes[slow_ids[0]][1]
        entered, release = threading.Event(), threading.Event()
        env_step = group.env.step

        def held_step(*args, **kwargs):
            entered.set()
            assert release.wait(30), "the test never released the held step"
            return env_step(*args, **kwargs)

        group.env.step = held_step
        answer = {}
        step = {"episode_actions": [{"episode_id": e, "action": 0} for e in slow_ids]}
        held = threading.Thread(target=lambda: answer.update(r=_post(url, "/episode/vectorized_step", json=step)))
        held.start()
        try:
            assert entered.wait(10)
            for token in (TOKEN_B, TOKEN_A):  # another token, then the same token's other group
                _, ids = _group(url, 2, token)
                _post(url, "/episode/vectorized_reset", token, json={"episode_ids": ids})
                other = {"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
                r = _post(url, "/episode/vectorized_step", token, json=other)
                assert r.status_code == 200 and r.json()["infos"][0]["step"] == 10
                assert _get(url, f"/episode/{ids[0]}", token).json()["step"] == 10
            assert held.is_alive() and "r" not in answer  # the held step was still inside the simulator
        finally:
            release.set()
            held.join(30)
        assert answer["r"].status_code == 200 and answer["r"].json()["infos"][0]["step"] == 10


def test_integers_written_as_integral_floats_are_integers(server_url):
    """JSON Schema counts 41.0 as an integer, so the server does too; 2.5, "2" and true stay refused."""
    _, ids = _group(server_url, 1)
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [5.0], "env_indices": [0.0]})
    step = {"episode_actions": [{"episode_id": ids[0], "action": 0.0, "step_size": 7.0}]}
    body = _post(server_url, "/episode/vectorized_step", json=step).json()
    assert len(body["observations"][0]) == 7 and body["infos"][0]["step"] == 7
    for bad in (2.5, "2", True):
        step["episode_actions"][0]["action"] = bad
        assert _post(server_url, "/episode/vectorized_step", json=step).status_code == 422
    assert _get(server_url, f"/episode/{ids[0]}").json()["step"] == 7


def test_malformed_and_oversized_bodies_then_server_still_serves(server_url):
    r = _post(server_url, "/episode/vectorized_step", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "detail" in r.json()
    big = {"episode_ids": ["x" * 100] * 20_000}  # > 1 MiB
    r = _post(server_url, "/episode/vectorized_reset", json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    _, ids = _group(server_url, 2)
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})
    r = _post(server_url, "/episode/vectorized_step", json={"episode_actions": [{"episode_id": ids[0], "action": 0}]})
    assert r.status_code == 200 and len(r.json()["observations"][0]) == 10


def _status_after_sending(url: str, token: str | None, body_bytes: int) -> int:
    """Send a chunked POST's headers and `body_bytes` of body, never its end; the status the
    server answers without waiting for the rest (a server that buffers the body first hangs)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {API}/episode/vectorized_reset HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: application/json\r\n" + (f"User-Token: {token}\r\n" if token else "") + "\r\n"
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head.encode())
        try:
            for _ in range(body_bytes // 0x10000):
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_chunked_bodies_are_capped_while_streaming_and_strangers_never_read():
    """The token is checked before any of the body is read, and a chunked body (no length) is
    refused at the first chunk past the limit, not after buffering it whole."""
    from torch_student_env.server.state import Limits

    with running_server(create_app(tokens={TOKEN_A}, limits=Limits(max_body_bytes=1 << 20))) as url:
        assert _status_after_sending(url, None, 64 << 10) == 401
        assert _status_after_sending(url, "intruder", 64 << 10) == 401
        assert _status_after_sending(url, TOKEN_A, (1 << 20) + (128 << 10)) == 413
        assert requests.get(f"{url}{API}/version", timeout=10).status_code == 200  # and it still serves


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
        info = _get(url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A)
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
        info = _get(url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A).json()
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
    info = _get(server_url, f"/episode/{env.backend.episode_ids[0]}", TOKEN_A)
    assert info.json()["step"] == 30
    env.step([0, 0]), env.step([0, 0])  # counters 4 and 5 are new: real steps
    with pytest.raises(RequestRejected, match="step_counter 4, expected 6"):
        again.step([0, 0])  # `again` is two steps behind: refused, never applied


# -- the seed client's API --------------------------------------------------------------------
def _seed_loop() -> str:
    """The seed notebook's loop, as quoted in examples/quickstart.py's docstring."""
    doc = (Path(__file__).resolve().parents[1] / "examples" / "quickstart.py").read_text().split('"""')[1]
    start = doc.index("    import numpy as np")
    end = doc.index("    env.close()") + len("    env.close()")
    return textwrap.dedent(doc[start:end])


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_seed_notebook_loop_runs_unchanged_through_compat(where, server_url, monkeypatch, capsys):
    if where == "server":
        monkeypatch.setenv("SERVER_URL", server_url)  # how the seed client is pointed at a server
    else:
        monkeypatch.delenv("SERVER_URL", raising=False)
    np.random.seed(0)
    namespace: dict = {}
    exec(compile(_seed_loop(), "seed_notebook", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Environment created with 4 parallel environments" in out and "Step 40:" in out
    env = namespace["env"]
    assert (type(env.episode_ids[0]) is str) and len(env.episode_ids) == 4
    if where == "server":
        assert not env.episode_ids[0].startswith("local-")


def test_compat_return_types_match_the_seed_client(server_url):
    from torch_student_env.compat import create_student_gym_env, create_student_gym_env_vectorized

    for url in (None, server_url):
        env = create_student_gym_env_vectorized(
            num_envs=3, step_size=10, server_url=url, user_token=TOKEN_A, prod=False, seed=1
        )
        obs, infos = env.reset()
        assert obs.shape == (3, 9) and obs.dtype == np.float32 and len(infos) == 3
        obs, rewards, term, trunc, infos = env.step(np.array([0, 2, 0]))
        assert isinstance(obs, list) and [o.shape for o in obs] == [(10, 9), (1, 9), (10, 9)]
        assert rewards.dtype == np.float32 and term.tolist() == [False, True, False]
        assert env.get_terminated_env_indices() == [1] and env.get_active_count() == 2
        assert "degradation" in infos[0] and infos[0]["step"] == 10
        reset_obs, reset_infos = env.reset_specific_envs([1])
        assert reset_obs.shape == (1, 9) and env.get_active_count() == 3
        obs, *_ = env.step([0, 0, 0], step_size=3, return_all_states=False)
        assert obs.shape == (3, 9)
        env.close()
        single = create_student_gym_env(server_url=url, user_token=TOKEN_A, seed=2)
        o, info = single.reset()
        assert o.shape == (9,) and info["step"] == 0
        o, r, te, tr, info = single.step(0, step_size=5)
        assert o.shape == (5, 9) and isinstance(r, float) and info["step"] == 5 and "degradation" not in info
        single.close()


def test_replayed_step_counter_with_other_actions_is_refused(server_url):
    """A retry repeats its request: the same counter with other actions is a 409, not the old result."""
    _, ids = _group(server_url, 2)
    _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})

    def step(actions, counter):
        entries = [{"episode_id": e, "action": a, "step_counter": counter} for e, a in zip(ids, actions, strict=True)]
        return _post(server_url, "/episode/vectorized_step", json={"episode_actions": entries})

    first = step([2, 2], 1)
    assert first.status_code == 200 and first.json()["terminateds"] == [True, True]
    assert step([2, 2], 1).json() == first.json()  # a true retry: the stored answer
    again = step([0, 0], 1)
    assert again.status_code == 409 and "different request" in again.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"seeds": [2**63, 1]},
        {"seeds": [2**64, None]},
        {"seeds": [-1, 1]},
        {"env_indices": [2**40, 0], "seeds": [1, 1]},
        {"reset_counters": [2**70, 1]},
    ],
)
def test_out_of_range_integers_are_422_and_change_nothing(server_url, body):
    _, ids = _group(server_url, 2)
    first = _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids}).json()["observations"]
    _post(
        server_url, "/episode/vectorized_step", json={"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
    )
    r = _post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, **body})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    info = [_get(server_url, f"/episode/{e}").json() for e in ids]
    assert [i["step"] for i in info] == [10, 10]  # neither episode was reset
    assert first  # the first reset's rows came back


@pytest.mark.parametrize("raw", [b'{"episode_ids": ["a"], "seeds": [Infinity]}', b'{"episode_ids": ["\\ud800"]}'])
def test_invalid_values_are_never_echoed_into_a_500(server_url, raw):
    r = _post(server_url, "/episode/vectorized_reset", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code in (404, 422) and "detail" in r.json(), (r.status_code, r.text[:200])


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


@pytest.mark.slow  # soak
def test_soak_script_checks_every_step_against_a_twin(tmp_path):
    """scripts/soak.py end to end, shortly: steps happen, and none is lost or differs."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    out = tmp_path / "soak.json"
    command = [sys.executable, str(script), "--clients", "2", "--seconds", "1.5", "--envs", "3", "--step-size", "5"]
    run = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["steps"] > 0 and figures["mismatches"] == 0 and figures["lost_steps"] == 0
    assert figures["errors"] == [] and figures["clients"] == 2
    latency = figures["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


@pytest.mark.slow  # soak
def test_soak_fill_token_reaches_the_engine_limit_and_is_refused_past_it():
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    run = subprocess.run([sys.executable, str(script), "--fill-token"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout)
    from torch_student_env.server import Limits

    assert figures["engines_held"] == Limits().max_envs_per_token
    assert (
        figures["refused"].startswith("409: this token would hold") and figures["largest_request_holds_its_group_s"] > 0
    )

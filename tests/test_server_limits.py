"""The reference server under bad input and load: 4xx with a named cause, bounded memory and work, no stalls."""

from __future__ import annotations

import socket

import pytest
import requests

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")

from helpers import API, TOKEN_A, TOKEN_B, api_get, api_group, api_post  # noqa: E402

from torch_student_env.server import create_app, running_server  # noqa: E402


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
    sid = api_post(server_url, "/session/create").json()["session_id"]
    r = api_post(server_url, path, headers={"Session-ID": sid}, json=body)
    assert r.status_code == status
    assert detail in str(r.json()["detail"])


def test_one_token_holds_a_bounded_number_of_engines():
    """Memory per token is bounded: past `max_envs_per_token` a create is refused (429) and
    changes nothing; another token is unaffected, and releasing a session frees its engines."""
    from torch_student_env.server.state import Limits

    app = create_app(tokens={TOKEN_A, TOKEN_B}, limits=Limits(max_envs_per_token=6))
    with running_server(app) as url:
        first, _ = api_group(url, 4)
        sid = api_post(url, "/session/create").json()["session_id"]
        body = {"num_envs": 3}
        refused = api_post(url, "/vectorized/episodes/create", headers={"Session-ID": sid}, json=body)
        assert refused.status_code == 409 and "would hold 7 envs (limit 6)" in refused.json()["detail"]
        assert len(app.state.server.registry.episodes) == 4 and app.state.server.registry.sessions[sid].envs == 0
        api_group(url, 6, TOKEN_B)  # another token has its own budget
        assert requests.delete(f"{url}{API}/session/{first}", headers={"User-Token": TOKEN_A}, timeout=10).ok
        made = api_post(url, "/vectorized/episodes/create", headers={"Session-ID": sid}, json=body)
        assert made.status_code == 200 and len(made.json()["episode_ids"]) == 3


def test_one_request_touches_a_bounded_number_of_episodes():
    from torch_student_env.server.state import Limits

    app = create_app(tokens={TOKEN_A}, limits=Limits(max_envs_per_request=4))
    with running_server(app) as url:
        ids = api_group(url, 4)[1] + api_group(url, 4)[1]
        api_post(url, "/episode/vectorized_reset", json={"episode_ids": ids[:4]})
        r = api_post(url, "/episode/vectorized_reset", json={"episode_ids": ids})
        assert r.status_code == 422 and "8 episodes in one request (limit 4)" in r.json()["detail"]
        step = {"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
        r = api_post(url, "/episode/vectorized_step", json=step)
        assert r.status_code == 422 and "limit 4" in r.json()["detail"]
        assert all(api_get(url, f"/episode/{e}").json()["step"] == 0 for e in ids)  # nothing moved


def test_a_long_step_never_stalls_other_groups_or_tokens():
    """A long step (more than `INLINE_FLIGHTS` flights) runs off the event loop, and each group
    has its own lock: while one group's step is held inside the simulator, another token, and the
    same token's other group, are served. (With one global lock, or a long step run inline, the
    requests below would wait for the held step, and their timeout would fail the test.)"""
    import threading

    from torch_student_env.server.routes import INLINE_FLIGHTS

    app = create_app(tokens={TOKEN_A, TOKEN_B})
    with running_server(app) as url:
        _, slow_ids = api_group(url, INLINE_FLIGHTS // 10 + 1)  # 10 flights each: one flight too many to run inline
        api_post(url, "/episode/vectorized_reset", json={"episode_ids": slow_ids})
        group = app.state.server.registry.episodes[slow_ids[0]][1]
        entered, release = threading.Event(), threading.Event()
        env_step = group.env.step

        def held_step(*args, **kwargs):
            entered.set()
            assert release.wait(30), "the test never released the held step"
            return env_step(*args, **kwargs)

        group.env.step = held_step
        answer = {}
        step = {"episode_actions": [{"episode_id": e, "action": 0} for e in slow_ids]}
        held = threading.Thread(target=lambda: answer.update(r=api_post(url, "/episode/vectorized_step", json=step)))
        held.start()
        try:
            assert entered.wait(10)
            for token in (TOKEN_B, TOKEN_A):  # another token, then the same token's other group
                _, ids = api_group(url, 2, token)
                api_post(url, "/episode/vectorized_reset", token, json={"episode_ids": ids, "seeds": [1, 2]})
                other = {"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
                r = api_post(url, "/episode/vectorized_step", token, json=other)
                assert r.status_code == 200 and r.json()["infos"][0]["step"] == 10
                assert api_get(url, f"/episode/{ids[0]}", token).json()["step"] == 10
            assert held.is_alive() and "r" not in answer  # the held step was still inside the simulator
        finally:
            release.set()
            held.join(30)
        assert answer["r"].status_code == 200 and answer["r"].json()["infos"][0]["step"] == 10


def test_malformed_and_oversized_bodies_then_server_still_serves(server_url):
    r = api_post(
        server_url, "/episode/vectorized_step", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "detail" in r.json()
    big = {"episode_ids": ["x" * 100] * 20_000}  # > 1 MiB
    r = api_post(server_url, "/episode/vectorized_reset", json=big)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    _, ids = api_group(server_url, 2)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2]})  # flies 10
    r = api_post(
        server_url, "/episode/vectorized_step", json={"episode_actions": [{"episode_id": ids[0], "action": 0}]}
    )
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
    _, ids = api_group(server_url, 2)
    # seeded: a random new engine fails within its first 10 flights one time in a thousand
    reset = {"episode_ids": ids, "seeds": [1, 2]}
    first = api_post(server_url, "/episode/vectorized_reset", json=reset).json()["observations"]
    api_post(
        server_url, "/episode/vectorized_step", json={"episode_actions": [{"episode_id": e, "action": 0} for e in ids]}
    )
    before = [api_get(server_url, f"/episode/{e}").json() for e in ids]
    r = api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, **body})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    after = [api_get(server_url, f"/episode/{e}").json() for e in ids]
    assert after == before and [i["step"] for i in after] == [10, 10]  # neither episode was reset
    assert first  # the first reset's rows came back


@pytest.mark.parametrize("raw", [b'{"episode_ids": ["a"], "seeds": [Infinity]}', b'{"episode_ids": ["\\ud800"]}'])
def test_invalid_values_are_never_echoed_into_a_500(server_url, raw):
    r = api_post(server_url, "/episode/vectorized_reset", data=raw, headers={"Content-Type": "application/json"})
    assert r.status_code in (404, 422) and "detail" in r.json(), (r.status_code, r.text[:200])


@pytest.mark.slow  # a server process, and a second one that must not start
def test_the_command_line_sets_every_limit_and_refuses_one_out_of_range():
    """`python -m torch_student_env.server` names each `Limits` field as an option: a step over the
    server's own step limit is refused (naming it), and an impossible limit stops the start with
    an error instead of a traceback."""
    import subprocess
    import sys

    from torch_student_env.server import server_process

    with server_process([TOKEN_A], "--max-step-size", "20", "--session-ttl", "60") as server:
        _, (episode,) = api_group(server.url, 1)
        assert api_post(server.url, "/episode/vectorized_reset", json={"episode_ids": [episode]}).status_code == 200
        step = {"episode_actions": [{"episode_id": episode, "action": 0, "step_size": 30}]}
        answer = api_post(server.url, "/episode/vectorized_step", json=step)
        assert answer.status_code == 422 and "step_size must be in [1, 20], got 30" in answer.json()["detail"]
        step["episode_actions"][0]["step_size"] = 20
        assert api_post(server.url, "/episode/vectorized_step", json=step).status_code == 200
    done = subprocess.run(
        [sys.executable, "-m", "torch_student_env.server", "--max-step-size", "0", "--db", ":memory:"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "error: Limits.max_step_size must be a positive number, got 0" in done.stderr
    assert "Traceback" not in done.stderr

"""The challenge protocol on 127.0.0.1: every endpoint's answers, sessions, tokens, exactly-once counters."""

from __future__ import annotations

import pytest
import requests
import torch

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")

from helpers import API, TOKEN_A, TOKEN_B, api_get, api_group, api_post  # noqa: E402

from torch_student_env import make_env  # noqa: E402
from torch_student_env.server import create_app, running_server  # noqa: E402


# -- protocol conformance ---------------------------------------------------------------------
def test_every_endpoint_shapes(server_url):
    v = requests.get(server_url + API + "/version", timeout=10)
    assert v.status_code == 200 and "latest_version" in v.json() and "step_counter" in v.json()["features"]
    sid, ids = api_group(server_url, 3, max_steps_per_episode=15)
    assert len(ids) == 3 and len(set(ids)) == 3
    r = api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2, None]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["observations"]) == 3 and all(len(o) == 9 for o in body["observations"])
    assert [i["episode_id"] for i in body["infos"]] == ids

    step = {
        "episode_actions": [
            {"episode_id": e, "action": a, "step_size": 10} for e, a in zip(ids, [0, 2, 0], strict=True)
        ]
    }
    r = api_post(server_url, "/episode/vectorized_step", json=step)
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
    body = api_post(server_url, "/episode/vectorized_step", json=step).json()
    assert [len(o) for o in body["observations"]] == [5, 10, 5]
    assert body["truncateds"] == [True, False, True] and body["rewards"][1] > 0
    assert body["infos"][1]["step"] == 10 and body["infos"][1]["total_reward"] == body["rewards"][1]
    # return_all_states=False: one row per episode (seeded: the step below reaches flight 10)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2, 3]})
    flat = {"episode_actions": [{"episode_id": e, "action": 0, "return_all_states": False} for e in ids]}
    body = api_post(server_url, "/episode/vectorized_step", json=flat).json()
    assert all(len(o) == 9 and isinstance(o[0], float) for o in body["observations"])

    info = api_get(server_url, f"/episode/{ids[0]}", TOKEN_A)
    assert info.status_code == 200 and info.json()["step"] == 10 and info.json()["episode_id"] == ids[0]
    latest = api_get(server_url, f"/episode/{ids[0]}/state/latest", TOKEN_A)
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
        assert len(app.state.server.registry.sessions) == 0 and len(app.state.server.registry.episodes) == 0
        sid = api_post(url, "/session/create", TOKEN_A).json()["session_id"]
        gone = requests.delete(f"{url}{API}/session/{sid}", headers={"User-Token": TOKEN_B}, timeout=10)
        assert gone.status_code == 404  # another token's session does not exist for you
        ok = requests.delete(f"{url}{API}/session/{sid}", headers={"User-Token": TOKEN_A}, timeout=10)
        assert ok.status_code == 200 and sid not in app.state.server.registry.sessions
        # past the limit, a token's least recently used session is released, never the request refused
        sids = [
            api_post(url, "/session/create", TOKEN_B).json()["session_id"]
            for _ in range(Limits().max_sessions_per_token + 3)
        ]
        assert set(app.state.server.registry.sessions) == set(sids[3:])
        # the score counts what the closed envs finished: 200 sales (the last 100 by default)
        score = requests.get(f"{url}{API}/user/{TOKEN_A}/score", params={"limit": 1000}, timeout=10).json()
        assert score["metrics"]["total_episodes"] == 200


def test_finished_episode_without_auto_reset_flies_nothing(server_url):
    _, ids = api_group(server_url, 2, auto_reset=False)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2]})  # flies 20
    sell = {"episode_actions": [{"episode_id": e, "action": a} for e, a in zip(ids, [2, 0], strict=True)]}
    assert api_post(server_url, "/episode/vectorized_step", json=sell).json()["terminateds"] == [True, False]
    body = api_post(server_url, "/episode/vectorized_step", json=sell).json()
    assert [len(o) for o in body["observations"]] == [0, 10] and body["rewards"][0] == 0.0
    assert body["terminateds"][0] is True and "reset it" in body["infos"][0]["message"]


def test_single_episode_endpoints(server_url):
    sid = api_post(server_url, "/session/create").json()["session_id"]
    r = api_post(
        server_url,
        "/episode/create",
        headers={"Session-ID": sid},
        json={"max_steps_per_episode": 1000, "step_size": 10},
    )
    episode_id = r.json()["episode_id"]
    assert len(r.json()["initial_observation"]) == 9  # the single-env client reads it
    r = api_post(server_url, "/episode/reset", json={"episode_id": episode_id, "seed": 3})
    assert len(r.json()["observation"]) == 9
    r = api_post(server_url, "/episode/step", json={"episode_id": episode_id, "action": 0, "step_size": 7})
    body = r.json()
    assert len(body["observation"]) == 7 and body["step"] == 7 and body["terminated"] is False
    assert isinstance(body["reward"], float) and body["info"]["episode_id"] == episode_id


# -- security and validation ------------------------------------------------------------------
def test_tokens_and_isolation(server_url):
    assert api_post(server_url, "/session/create", token=None).status_code == 401
    r = api_post(server_url, "/session/create", token="intruder")
    assert r.status_code == 401 and "User-Token" in r.json()["detail"]
    sid, ids = api_group(server_url, 2)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [1, 2]})
    # token B sees nothing of token A's
    step = {"episode_actions": [{"episode_id": ids[0], "action": 0}]}
    assert api_post(server_url, "/episode/vectorized_step", TOKEN_B, json=step).status_code == 404
    assert api_post(server_url, "/episode/vectorized_reset", TOKEN_B, json={"episode_ids": ids}).status_code == 404
    r = api_get(server_url, f"/episode/{ids[0]}", TOKEN_B)
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    r = api_post(server_url, "/vectorized/episodes/create", TOKEN_B, headers={"Session-ID": sid}, json={"num_envs": 1})
    assert r.status_code == 404
    # and A's episode did not move
    assert api_post(server_url, "/episode/vectorized_step", json=step).json()["infos"][0]["step"] == 10


def test_integers_written_as_integral_floats_are_integers(server_url):
    """JSON Schema counts 41.0 as an integer, so the server does too; 2.5, "2" and true stay refused."""
    _, ids = api_group(server_url, 1)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids, "seeds": [5.0], "env_indices": [0.0]})
    step = {"episode_actions": [{"episode_id": ids[0], "action": 0.0, "step_size": 7.0}]}
    body = api_post(server_url, "/episode/vectorized_step", json=step).json()
    assert len(body["observations"][0]) == 7 and body["infos"][0]["step"] == 7
    for bad in (2.5, "2", True):
        step["episode_actions"][0]["action"] = bad
        assert api_post(server_url, "/episode/vectorized_step", json=step).status_code == 422
    assert api_get(server_url, f"/episode/{ids[0]}").json()["step"] == 7


def test_replayed_step_counter_with_other_actions_is_refused(server_url):
    """A retry repeats its request: the same counter with other actions is a 409, not the old result."""
    _, ids = api_group(server_url, 2)
    api_post(server_url, "/episode/vectorized_reset", json={"episode_ids": ids})

    def step(actions, counter):
        entries = [{"episode_id": e, "action": a, "step_counter": counter} for e, a in zip(ids, actions, strict=True)]
        return api_post(server_url, "/episode/vectorized_step", json={"episode_actions": entries})

    first = step([2, 2], 1)
    assert first.status_code == 200 and first.json()["terminateds"] == [True, True]
    assert step([2, 2], 1).json() == first.json()  # a true retry: the stored answer
    again = step([0, 0], 1)
    assert again.status_code == 409 and "different request" in again.json()["detail"]

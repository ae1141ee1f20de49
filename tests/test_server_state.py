"""`ServerState` without HTTP: the registry, replay, expiry and scores, and that a group's answers
are its env's (the server translates; the episode rules are the env's)."""

from __future__ import annotations

import pytest
import torch

from torch_student_env import make_env
from torch_student_env.server.state import Limits, ServerError, ServerState

TOKEN = "t"


def _group(state: ServerState, n: int, auto_reset: bool = True, token: str = TOKEN, max_steps: int = 1000):
    session = state.create_session(token)
    return state.create_group(token, session, n, max_steps, auto_reset)


def _act(ids, action=0, step_size=10, **extra):
    return [{"episode_id": e, "action": action, "step_size": step_size, **extra} for e in ids]


def test_seeded_episodes_are_the_env_episodes_row_for_row():
    """A reset with (seed, env index) is that engine of `make_env(seed=...)`: same first row, same
    step rows, rewards and counters, and the answers carry exactly the rows each step flew."""
    state = ServerState()
    ids = _group(state, 2).episode_ids
    obs, infos = state.reset(TOKEN, ids, [5, 5], [2, 0], None)
    twin = make_env(num_envs=3, seed=5, history=50, privileged=True)
    first = twin.reset()
    assert obs == [first["row"][2].tolist(), first["row"][0].tolist()]
    assert infos[0]["step"] == 0 and infos[0]["health"] == pytest.approx(float(first["health"][2]))
    for action in (0, 1, 0):
        answers = state.step(TOKEN, _act(ids, action))
        td = twin.step(torch.full((3,), action))
        for answer, i in zip(answers, (2, 0), strict=True):
            k = int(td["new_rows"][i])
            assert answer["rows"] == td["observation"][i, 50 - k :].tolist() and k == 10
            assert answer["reward"] == pytest.approx(float(td["reward"][i]))
            assert answer["info"]["step"] == int(td["age"][i]) and answer["info"]["repairs"] == int(td["repairs"][i])
    assert state.episode_info(TOKEN, ids[0])["step"] == 30


def test_a_repeated_counter_replays_without_stepping_and_a_skipped_one_is_refused():
    state = ServerState()
    ids = _group(state, 1).episode_ids
    state.reset(TOKEN, ids, [None], None, [1])
    first = state.step(TOKEN, _act(ids, step_counter=1))
    again = state.step(TOKEN, _act(ids, step_counter=1))
    assert {k: again[0][k] for k in first[0]} == first[0]  # the stored answer (and its request)
    assert state.episode_info(TOKEN, ids[0])["step"] == 10
    with pytest.raises(ServerError) as err:
        state.step(TOKEN, _act(ids, step_counter=3))
    assert err.value.status == 409 and "expected 2" in err.value.detail
    with pytest.raises(ServerError, match="different request") as err:
        state.step(TOKEN, _act(ids, action=1, step_counter=1))
    assert state.episode_info(TOKEN, ids[0])["step"] == 10  # nothing moved after the refusals


def test_unknown_foreign_unreset_and_expired_episodes_are_refused():
    state = ServerState(Limits(session_ttl_s=3600))
    ids = _group(state, 2).episode_ids
    for token, episode, status in ((TOKEN, "nope", 404), ("other", ids[0], 404)):
        with pytest.raises(ServerError) as err:
            state.step(token, _act([episode]))
        assert err.value.status == status
    with pytest.raises(ServerError, match="has not been reset") as err:
        state.step(TOKEN, _act(ids[:1]))
    assert err.value.status == 409
    with pytest.raises(ServerError, match="appears twice") as err:  # JSON Schema cannot say it: 409
        state.step(TOKEN, _act([ids[0], ids[0]]))
    assert err.value.status == 409
    with pytest.raises(ServerError, match="appears twice") as err:  # the schema's uniqueItems: 422
        state.reset(TOKEN, [ids[0], ids[0]], [None, None], None, None)
    assert err.value.status == 422
    state.limits.session_ttl_s = -1.0  # every session is now past its TTL
    with pytest.raises(ServerError) as err:
        state.reset(TOKEN, ids, [None, None], None, None)
    assert err.value.status == 404 and not state.registry.episodes and not state.registry.sessions


def test_finished_episodes_are_scored_and_frozen_without_auto_reset():
    state = ServerState()
    ids = _group(state, 2, auto_reset=False).episode_ids
    state.reset(TOKEN, ids, [None, None], None, None)
    sold = state.step(TOKEN, _act(ids, action=2))
    assert all(a["terminated"] and a["info"]["reason"] == "sold" and len(a["rows"]) == 1 for a in sold)
    frozen = state.step(TOKEN, _act(ids))
    assert all(a["rows"] == [] and a["reward"] == 0.0 and a["terminated"] for a in frozen)
    assert frozen[0]["info"]["message"].startswith("episode finished")
    metrics = state.score(TOKEN)
    assert metrics["total_episodes"] == 2 and metrics["total_reward"] == pytest.approx(300.0)
    # a reset starts it again; seeded, so that the fresh engine is one that flies its first 10
    # flights (a group's engines are random, and a new engine fails now and then)
    state.reset(TOKEN, ids[:1], [1], None, None)
    assert len(state.step(TOKEN, _act(ids[:1]))[0]["rows"]) == 10


def test_reset_if_done_restarts_in_the_same_call_and_counts_the_reset():
    state = ServerState()
    ids = _group(state, 1).episode_ids
    state.reset(TOKEN, ids, [None], None, [1])
    (answer,) = state.step(TOKEN, _act(ids, action=2, step_counter=1, reset_if_done=True))
    assert answer["terminated"] and answer["reset"]["info"]["step"] == 0
    info = state.episode_info(TOKEN, ids[0])
    assert info["reset_counter"] == 2 and info["step"] == 0 and not info["terminated"]
    assert info["observation"] == answer["reset"]["observation"]


def test_limits_are_checked_before_anything_is_allocated():
    state = ServerState(Limits(max_envs_per_request=4, max_envs_per_token=6))
    with pytest.raises(ServerError, match=r"num_envs must be in \[1, 4\]"):
        _group(state, 5)
    _group(state, 4)
    with pytest.raises(ServerError) as err:
        _group(state, 3)
    assert err.value.status == 409 and "would hold 7 envs" in err.value.detail

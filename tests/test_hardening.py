"""Bad seeds, checkpoints and actions are refused before anything changes (property-based too)."""

from __future__ import annotations

import pytest
import torch
from helpers import TOKEN_A, assert_same_snapshot, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_student_env import make_env


def _env():
    env = make_env(num_envs=4, seed=3, privileged=True)
    env.reset()
    env.step(torch.tensor([0, 1, 0, 2]))
    return env


@pytest.mark.parametrize("seed", [2**63, 2**64, -1, 1.5, "3", True])
def test_bad_seeds_are_refused_before_anything_changes(seed):
    with pytest.raises((ValueError, TypeError), match="seed must be"):
        make_env(num_envs=2, seed=seed)
    env = _env()
    before = snapshot(env)
    with pytest.raises((ValueError, TypeError), match="seed must be"):
        env.reset(seed=seed)
    assert_same_snapshot(before, snapshot(env))
    env.load_state_dict(env.state_dict())  # still loadable


def _corruptions(state):
    """(description, corrupted state) pairs, each a copy."""
    import copy

    def edit(fn):
        s = copy.deepcopy(state)
        fn(s)
        return s

    yield "missing key", edit(lambda s: s.pop("window_flight"))
    yield "extra key", edit(lambda s: s.__setitem__("surprise", 1))
    yield "missing backend key", edit(lambda s: s["backend"].pop("episode"))
    yield "missing engine field", edit(lambda s: s["backend"]["engines"].pop("health"))
    yield "wrong window size", edit(lambda s: s.__setitem__("window", s["window"][:, :5]))
    yield "wrong batch", edit(lambda s: s["backend"]["engines"].__setitem__("health", torch.zeros(5)))
    yield "NaN health", edit(lambda s: s["backend"]["engines"]["health"].__setitem__(0, float("nan")))
    yield "float window_flight", edit(lambda s: s.__setitem__("window_flight", s["window_flight"].float()))
    yield "string seed", edit(lambda s: s.__setitem__("seed", "3"))
    yield "huge backend seed", edit(lambda s: s["backend"].__setitem__("seed", 2**64))
    yield "not a tensor", edit(lambda s: s.__setitem__("active", [True] * 4))


def test_corrupt_checkpoints_are_refused_atomically():
    env = _env()
    state = env.state_dict()
    before = snapshot(env)
    for what, bad in _corruptions(state):
        with pytest.raises((ValueError, TypeError)):  # TypeError: a seed that is not an int
            env.load_state_dict(bad)
        assert_same_snapshot(before, snapshot(env)), what
    twin = make_env(num_envs=4, seed=99, privileged=True)
    twin.load_state_dict(state)
    a, b = env.step(torch.zeros(4, dtype=torch.long)), twin.step(torch.zeros(4, dtype=torch.long))
    assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["reward"], b["reward"])


_action = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.none()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_action, min_size=0, max_size=6))
def test_any_action_input_is_taken_or_refused_cleanly(actions):
    """Valid actions step; anything else raises TypeError/ValueError and changes nothing."""
    env = _env()
    before = snapshot(env)
    valid = len(actions) == 4 and all(type(a) is int and 0 <= a <= 2 for a in actions)
    if valid:
        env.step(actions)
        return
    with pytest.raises((TypeError, ValueError, OverflowError)):
        env.step(actions)
    assert_same_snapshot(before, snapshot(env))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["health", "wear_rate", "flights", "repairs", "episode_key"]),
    st.sampled_from(["nan", "shape", "dtype"]),
)
def test_any_corrupted_engine_field_is_refused(field, how):
    env = _env()
    state = env.state_dict()
    value = state["backend"]["engines"][field]
    if how == "nan":
        if not value.is_floating_point():
            return
        value = value.clone()
        value[1] = float("inf")
    elif how == "shape":
        value = torch.cat([value, value[:1]])
    else:
        value = value.to(torch.float64)
    state["backend"]["engines"][field] = value
    before = snapshot(env)
    with pytest.raises(ValueError, match=field):
        env.load_state_dict(state)
    assert_same_snapshot(before, snapshot(env))


class _Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_crafted_checkpoint_never_runs_its_code(tmp_path):
    from torch_student_env.evaluate import load_policy

    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"agent": _Payload(str(target))}, evil)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        load_policy(str(evil), torch.device("cpu"), seed=0)
    assert not target.exists()


def test_request_bounds_are_the_limits_in_use():
    """A server built with other `Limits` accepts and refuses by them, and its schema says so."""
    pytest.importorskip("fastapi", reason="server tests need the [server] extra")
    from fastapi.testclient import TestClient

    from torch_student_env.server import Limits, create_app

    wide = Limits(max_envs_per_request=2048, max_envs_per_session=4096, max_steps_per_episode=200_000, max_step_size=50)
    narrow = Limits(max_envs_per_request=8, max_steps_per_episode=500, max_step_size=20)
    for limits in (wide, narrow):
        client = TestClient(create_app(tokens={TOKEN_A}, limits=limits))
        headers = {"User-Token": TOKEN_A}
        session = client.post("/api/v1/session/create", headers=headers).json()["session_id"]
        headers["Session-ID"] = session

        def create(num_envs, max_steps, client=client, headers=headers):
            body = {"num_envs": num_envs, "env_config": {"max_steps_per_episode": max_steps}}
            return client.post("/api/v1/vectorized/episodes/create", json=body, headers=headers)

        top = limits.max_envs_per_request
        assert create(top, limits.max_steps_per_episode).status_code == 200
        for too_big in (create(top + 1, 100), create(1, limits.max_steps_per_episode + 1)):
            assert too_big.status_code == 422, too_big.text
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert schema["VectorizedCreate"]["properties"]["num_envs"]["maximum"] == top
        assert schema["VectorizedStep"]["properties"]["episode_actions"]["maxItems"] == top
        assert schema["VectorizedReset"]["properties"]["episode_ids"]["maxItems"] == top
        assert schema["EnvConfigBody"]["properties"]["max_steps_per_episode"]["maximum"] == limits.max_steps_per_episode
        assert schema["SingleStep"]["properties"]["step_size"]["maximum"] == limits.max_step_size

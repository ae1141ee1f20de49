"""The API contract of DESIGN.md: keys, shapes, dtypes, devices, windows and the valid mask."""

from __future__ import annotations

import pytest
import torch
from helpers import const_actions

from torch_student_env import FEATURE_NAMES, Action
from torch_student_env.spec import FINAL_KEYS, OBSERVATION_KEYS, PRIVILEGED_KEYS, STEP_KEYS, key_shapes

CONTRACT = True  # runs over the eager, fast (compiled) and remote paths (conftest)

F = len(FEATURE_NAMES)


@pytest.mark.parametrize("n", [1, 4, 257])
@pytest.mark.parametrize("step_size", [1, 10, 50])
def test_keys_shapes_dtypes_device(env_factory, n, step_size):
    if env_factory.path == "fast" and step_size != 10:
        pytest.skip("one step size on the fast path (any number of engines): each is its own ~30 s compile cold")
    env = env_factory(num_envs=n, step_size=step_size, seed=0)
    td = env.reset()
    assert td.batch_size == torch.Size([n]) and td.device == torch.device("cpu")
    player = {"age", "since_repair", "repairs"}
    assert set(td.keys()) == set(OBSERVATION_KEYS) == {"observation", "row", "flight", "valid"} | player
    td = env.step(torch.randint(0, 2, (n,)))
    assert set(td.keys()) == set(STEP_KEYS)
    for key, (shape, dtype) in key_shapes(STEP_KEYS, n, step_size).items():
        assert td[key].shape == shape and td[key].dtype == dtype and td[key].device == env.device, key
    assert td["observation"].shape == (n, step_size, F) and td["reward"].shape == (n,)
    assert torch.isfinite(td["observation"]).all() and torch.isfinite(td["reward"]).all()
    assert torch.equal(td["row"], td["observation"][:, -1])
    assert torch.equal(td["valid"], td["flight"] >= 0)


def test_history_longer_than_step_size_keeps_older_rows(env_factory):
    if env_factory.path == "fast":
        pytest.skip("another compiled configuration (~30 s cold): test_fast_path holds the fast path equal to eager")
    env = env_factory(num_envs=3, step_size=10, history=25, seed=1)
    td = env.reset()
    assert td["observation"].shape == (3, 25, F)
    assert td["flight"][:, -1].tolist() == [0, 0, 0] and int(td["valid"].sum()) == 3
    first_row = td["row"].clone()
    td1 = env.step(const_actions(3, Action.DO_NOTHING))
    # 1 reset row + 10 flights; the rest is padding, oldest first.
    assert td1["flight"][0].tolist() == [-1] * 14 + list(range(11))
    assert torch.equal(td1["observation"][:, -11], first_row)
    assert (td1["observation"][~td1["valid"]] == 0).all()
    td2 = env.step(const_actions(3, Action.DO_NOTHING))
    assert td2["flight"][0].tolist() == [-1] * 4 + list(range(21))
    # the rows flown in step 1 slid back by 10 places
    assert torch.equal(td2["observation"][:, 4:15], td1["observation"][:, 14:25])


def test_history_shorter_than_step_size_keeps_newest_rows(env_factory):
    if env_factory.path == "fast":
        pytest.skip("another compiled configuration (~30 s cold): test_fast_path holds the fast path equal to eager")
    env = env_factory(num_envs=2, step_size=10, history=3, seed=2)
    env.reset()
    td = env.step(const_actions(2, Action.DO_NOTHING))
    assert td["flight"].tolist() == [[8, 9, 10], [8, 9, 10]]


def test_per_call_step_size_override(env_factory):
    # on the fast path the configured step size is compiled and the others run eagerly
    env = env_factory(num_envs=2, step_size=10, seed=3)
    env.reset()
    td = env.step(const_actions(2, Action.DO_NOTHING), step_size=3)
    assert td["flight"][0, -4:].tolist() == [0, 1, 2, 3] and int(td["valid"][0].sum()) == 4
    td = env.step(const_actions(2, Action.DO_NOTHING), step_size=50)
    assert td["flight"][0].tolist() == list(range(44, 54))


def test_privileged_keys_only_when_asked(env_factory):
    hidden = env_factory(num_envs=4, seed=0)
    shown = env_factory(num_envs=4, seed=0, privileged=True)
    assert "health" not in hidden.reset().keys()
    td = shown.reset()
    assert set(td.keys()) == set(OBSERVATION_KEYS) | set(PRIVILEGED_KEYS)
    for key, (shape, dtype) in key_shapes(PRIVILEGED_KEYS, 4, 10).items():
        assert td[key].shape == shape and td[key].dtype == dtype, key
    assert td["window_health"].shape == (4, 10)
    assert (td["window_health"][:, -1] == td["health"]).all()  # the newest row is the engine now
    # privileged adds keys; it never changes what the others contain
    assert torch.equal(td["observation"], hidden.reset(seed=0)["observation"])


def test_sensor_values_are_physical(env_factory):
    if env_factory.path == "fast":
        pytest.skip("the model's levels, not the compiled path's: eager and remote suffice")
    env = env_factory(num_envs=64, seed=5)
    env.reset()
    td = env.step(const_actions(64, Action.DO_NOTHING))
    obs = td["observation"][td["valid"]]
    # the challenge's server flies cruise only
    assert (obs[:, FEATURE_NAMES.index("phase_type")] == 0).all()
    # healthy cruise levels of the challenge's notebook engine, within 1 %
    for name, level in {"HPC_Tout": 795, "HP_Nmech": 19370, "LPT_Tin": 1117, "Fuel_flow": 0.372}.items():
        mean = obs[:, FEATURE_NAMES.index(name)].mean().item()
        assert abs(mean / level - 1) < 0.01, (name, mean)
    dtamb = obs[:, FEATURE_NAMES.index("DTAMB")]
    assert dtamb.min() >= 9.1 and dtamb.max() <= 10.9


@pytest.mark.parametrize("fast", [False, True])
def test_returned_tensors_keep_their_values_after_later_steps(fast):
    """Outputs are views of the env's buffers (engines innermost), but never written in place."""
    from torch_student_env import make_env

    env = make_env(num_envs=4, seed=4, fast=fast, privileged=True)
    kept = env.reset()
    snapshot = kept.clone()
    for _ in range(3):
        kept_step = env.step(const_actions(4, Action.DO_NOTHING))
    snapshot_step = kept_step.clone()
    for _ in range(3):
        env.step(const_actions(4, Action.REPAIR))
    assert (kept == snapshot).all() and (kept_step == snapshot_step).all()
    assert kept_step["observation"].contiguous().view(4, -1).shape == (4, 10 * F)


def test_final_observation_can_be_left_out_and_nothing_else_changes(env_factory):
    if env_factory.path == "fast":
        pytest.skip("another compiled configuration (~30 s cold): leaving outputs out is the same graph, less its end")
    full = env_factory(num_envs=4, seed=3)
    lean = env_factory(num_envs=4, seed=3, final_observation=False)
    full.reset(), lean.reset()
    gen = torch.Generator().manual_seed(3)
    ended = 0
    for _ in range(25):
        actions = torch.multinomial(torch.tensor([0.8, 0.1, 0.1]), 4, replacement=True, generator=gen)
        a, b = full.step(actions), lean.step(actions)
        assert set(b.keys()) == set(STEP_KEYS) - set(FINAL_KEYS) and set(FINAL_KEYS) <= set(a.keys())
        for key in b.keys():
            if b[key].is_floating_point() and env_factory.path == "fast":  # two graphs: rounding may differ
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-3, msg=key)
            else:
                assert torch.equal(a[key], b[key]), key
        ended += int(a["done"].sum())
    assert ended > 0  # the comparison crossed episode ends, where the final windows would be


def test_outputs_are_ordinary_tensors_that_models_train_on(env_factory):
    """Eager steps run below autograd's bookkeeping (`eager.below_autograd`): what they return
    must still be plain tensors, usable in a graph that is differentiated and in in-place ops."""
    env = env_factory(num_envs=4, seed=6)
    env.reset()
    td = env.step(const_actions(4, Action.SELL))  # every episode ends: the final keys are filled
    conv = torch.nn.Conv1d(F, 2, kernel_size=3)
    for key in ("observation", "final_observation"):
        x = td[key]
        assert not torch.is_inference(x) and not x.requires_grad, key
        conv.zero_grad()
        conv(x.transpose(1, 2)).square().mean().backward()
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, key
    reward = td["reward"].clone()
    td["reward"].add_(1.0)  # in place on an output: allowed, and changes that output only
    assert torch.equal(td["reward"], reward + 1.0)


def test_player_counters_follow_the_actions_and_the_flight_counter(env_factory):
    """age, since_repair and repairs, against a model of them written from the actions alone: a
    step that does not end its episode flies 10 flights; an ended episode restarts at 0."""
    n = 4
    env = env_factory(num_envs=n, seed=3)
    td = env.reset()
    assert td["age"].eq(0).all() and td["since_repair"].eq(0).all() and td["repairs"].eq(0).all()
    age, since, repairs = (torch.zeros(n, dtype=torch.int64) for _ in range(3))
    gen = torch.Generator().manual_seed(1)
    seen_end = seen_repair = 0
    for _ in range(80):
        actions = torch.multinomial(torch.tensor([0.85, 0.12, 0.03]), n, replacement=True, generator=gen)
        td = env.step(actions)
        repaired = actions == Action.REPAIR
        ended = td["episode_ended"]
        assert torch.equal(td["episode_repairs"][ended], (repairs + repaired.long())[ended])
        flown = td["episode_length"] - age  # the ending step may fly fewer (a sale, a failure)
        final_since = torch.where(repaired, 0, since) + flown
        assert torch.equal(td["final_since_repair"][ended], final_since[ended])
        age = torch.where(ended, 0, age + 10)
        since = torch.where(ended, 0, torch.where(repaired, 10, since + 10))
        repairs = torch.where(ended, 0, repairs + repaired.long())
        assert torch.equal(td["age"], age) and torch.equal(td["since_repair"], since)
        assert torch.equal(td["repairs"], repairs)
        seen_end += int(ended.sum())
        seen_repair += int((repaired & ~ended).sum())
    assert seen_end > 0 and seen_repair > 0  # both branches of the model were exercised

"""The episode rules the env owns for everyone (server and compat included): partial steps,
the three autoreset modes, which rows a step added, per-engine seeds, the player-side counters."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_same_snapshot, const_actions, snapshot

from torch_student_env import Action, make_env


def test_partial_step_flies_only_the_masked_engines(env_factory):
    """Unmasked engines keep their window and counters, earn 0, and lose nothing: stepped later,
    each engine is exactly where an env that stepped it every time is (engines are independent)."""
    masked = env_factory(num_envs=3, seed=4, history=20)
    every = env_factory(num_envs=3, seed=4, history=20)
    masked.reset(), every.reset()
    first = masked.step(const_actions(3, 0))
    every.step(const_actions(3, 0))
    td = masked.step(const_actions(3, 0), mask=torch.tensor([True, False, True]))
    assert td["reward"][1] == 0 and td["new_rows"].tolist() == [10, 0, 10]
    assert td["age"].tolist() == [20, 10, 20] and not td["done"][1]
    assert torch.equal(td["observation"][1], first["observation"][1])
    reference = every.step(const_actions(3, 0))
    for key in ("observation", "flight", "age", "reward"):
        assert torch.equal(td[key][[0, 2]], reference[key][[0, 2]]), key
    late = masked.step(const_actions(3, 0), mask=torch.tensor([False, True, False]))
    assert late["new_rows"].tolist() == [0, 10, 0]
    assert torch.equal(late["observation"][1], reference["observation"][1])
    assert torch.equal(late["reward"][1], reference["reward"][1]) and late["reward"][[0, 2]].eq(0).all()


def test_partial_step_rejects_a_bad_mask_and_changes_nothing(env_factory):
    env = env_factory(num_envs=3, seed=4)
    env.reset()
    before = snapshot(env)
    for bad, error in (([True, False], ValueError), (torch.tensor([1, 0, 1]), TypeError)):
        with pytest.raises(error, match="mask"):
            env.step(const_actions(3, 0), mask=bad)
    assert_same_snapshot(before, snapshot(env))


def test_next_step_autoreset_restarts_when_stepped_and_flies_the_action(env_factory):
    """The challenge server's rule: a finished engine waits, ended, until it is stepped; that step
    restarts it and flies the fresh engine: the same episode the same-step env restarted into."""
    nxt = env_factory(num_envs=2, seed=0, history=11, autoreset_mode="next_step")
    same = env_factory(num_envs=2, seed=0, history=11)
    nxt.reset(), same.reset()
    sell = torch.tensor([0, Action.SELL])
    a, b = nxt.step(sell), same.step(sell)
    assert a["terminated"][1] and b["terminated"][1]
    assert nxt.active.tolist() == [True, False] and same.active.tolist() == [True, True]
    assert torch.equal(a["observation"][1], b["final_observation"][1]) and a["age"][1] == 1  # sold at once
    assert a["return_so_far"][1] == a["episode_return"][1] and b["return_so_far"][1] == 0
    waiting = nxt.step(const_actions(2, 0), mask=torch.tensor([True, False]))  # not stepped: still ended
    assert waiting["terminated"][1] and not nxt.active[1] and waiting["new_rows"][1] == 0
    same.step(const_actions(2, 0), mask=torch.tensor([True, False]))
    a, b = nxt.step(const_actions(2, 0)), same.step(const_actions(2, 0))
    assert nxt.active.all() and a["new_rows"][1] == 10 and not a["terminated"][1]
    for key in ("observation", "flight", "age", "reward", "return_so_far"):
        assert torch.equal(a[key][1], b[key][1]), key
    assert a["flight"][1].tolist() == list(range(11))  # the reset row, then the 10 flights flown


def test_new_rows_are_the_newest_rows_of_the_window(env_factory):
    """Each step's `new_rows` rows are the newest of the window, flown in order after the rows
    already there; the rest of the window is the previous one, shifted."""
    n = 6
    env = env_factory(num_envs=n, seed=2, history=50, autoreset_mode="disabled")
    td = env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        actions = torch.multinomial(torch.tensor([0.85, 0.1, 0.05]), n, replacement=True, generator=gen)
        prev, td = td, env.step(actions)
        for i in range(n):
            k = int(td["new_rows"][i])
            last = int(prev["flight"][i, -1])
            assert td["flight"][i, 50 - k :].tolist() == list(range(last + 1, last + 1 + k))
            assert torch.equal(td["flight"][i, : 50 - k], prev["flight"][i, k:])
            assert torch.equal(td["observation"][i, : 50 - k], prev["observation"][i, k:])
        if td["done"].all():
            break


def test_seed_engines_replays_another_seeds_engine_and_checks_first(env_factory):
    env = env_factory(num_envs=3, seed=1)
    other = env_factory(num_envs=3, seed=42)
    env.reset()
    before = snapshot(env) if env_factory.backend == "local" else None
    bad = (
        ([0, 42], None, ValueError, "seeds must have shape"),
        ([0, -1, 0], None, ValueError, "seeds must be in"),
        ([0.5, 1.0, 0.0], None, TypeError, "seeds must be integers"),
        ([0, True, 0], None, TypeError, "seeds must be integers, got a bool"),
        ([0, 42, 0], [0, 2**31, 0], ValueError, "env_indices must be in"),
    )
    for seeds, indices, error, message in bad:
        with pytest.raises(error, match=message):
            env.seed_engines([False, True, False], seeds, indices)
    if before is not None:
        assert_same_snapshot(before, snapshot(env))
    env.seed_engines([False, True, False], [0, 42, 0])
    mine, theirs = env.reset(mask=torch.tensor([False, True, False])), other.reset()
    assert torch.equal(mine["row"][1], theirs["row"][1]) and not torch.equal(mine["row"][0], theirs["row"][0])
    for _ in range(3):
        mine, theirs = env.step(const_actions(3, 0)), other.step(const_actions(3, 0))
        assert torch.equal(mine["observation"][1], theirs["observation"][1])


def test_player_counters_survive_a_checkpoint():
    env = make_env(num_envs=4, seed=8)
    env.reset()
    env.step(torch.tensor([1, 0, 1, 0]))
    state = env.state_dict()
    after = env.step(torch.tensor([0, 1, 0, 0]))
    restored = make_env(num_envs=4, seed=99)
    restored.reset()
    restored.load_state_dict(state)
    again = restored.step(torch.tensor([0, 1, 0, 0]))
    for key in ("age", "since_repair", "repairs", "observation", "return_so_far"):
        assert torch.equal(after[key], again[key]), key
    assert after["repairs"].tolist() == [1, 1, 1, 0] and after["since_repair"].tolist() == [20, 10, 20, 20]

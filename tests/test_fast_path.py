"""The compiled fast path equals eager (one graph, no recompiles) and is chosen for large batches only."""

from __future__ import annotations

import torch

from torch_student_env import make_env


def test_fast_path_matches_eager():
    from torch._dynamo.utils import counters

    graphs_before = counters["stats"]["unique_graphs"]
    eager = make_env(num_envs=48, seed=12, fast=False, privileged=True)
    fast = make_env(num_envs=48, seed=12, fast=True, privileged=True)
    assert fast.config.fast and not eager.config.fast
    a, b = eager.reset(), fast.reset()
    assert torch.allclose(a["observation"], b["observation"], rtol=1e-6)
    gen = torch.Generator().manual_seed(0)
    ended = quiet = 0
    for _ in range(40):
        # few sales: a new engine fails now and then at any health, so steps where no episode
        # ends need most of the 48 engines to keep flying
        actions = torch.multinomial(torch.tensor([0.84, 0.15, 0.01]), 48, replacement=True, generator=gen)
        a, b = eager.step(actions), fast.step(actions)
        assert torch.equal(a["done"], b["done"]) and torch.equal(a["flight"], b["flight"])
        assert torch.allclose(a["observation"], b["observation"], rtol=1e-5, atol=1e-3)
        assert torch.allclose(a["reward"], b["reward"], rtol=1e-5, atol=1e-2)
        assert torch.allclose(a["health"], b["health"], atol=1e-5)
        ended += int(a["done"].sum())
        quiet += int(not a["done"].any())
    # Both kinds of step: with auto-resets, and without, where eager on CPU skips building fresh
    # engines (sim_step) while the compiled step builds them for all N and selects none.
    assert ended > 0 and quiet > 0
    # one graph for the whole life of the env: nothing about a reset (e.g. aliased state fields)
    # or an action may trigger a recompile
    assert counters["stats"]["unique_graphs"] - graphs_before == 1
    # and another env of the same configuration (another seed) reuses it: no compile per env
    other = make_env(num_envs=48, seed=99, fast=True)
    other.reset()
    other.step(torch.zeros(48, dtype=torch.int64))
    assert counters["stats"]["unique_graphs"] - graphs_before == 1


def test_fast_path_windows_match_eager_across_frozen_engines_and_partial_resets():
    """Compiled and eager windows agree with W > K (old rows survive a step), frozen engines and
    partial resets."""
    kwargs = dict(num_envs=32, seed=5, history=16, autoreset_mode="disabled", privileged=True, max_steps_per_episode=60)
    eager, fast = make_env(fast=False, **kwargs), make_env(fast=True, **kwargs)
    eager.reset(), fast.reset()
    gen = torch.Generator().manual_seed(3)
    frozen_steps = 0
    for _ in range(30):
        actions = torch.multinomial(torch.tensor([0.8, 0.15, 0.05]), 32, replacement=True, generator=gen)
        a, b = eager.step(actions), fast.step(actions)
        for key in ("flight", "valid", "done", "final_flight", "final_valid"):
            assert torch.equal(a[key], b[key]), key
        for key in ("observation", "final_observation", "window_health"):
            assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-3), key
        frozen_steps += int(a["done"].sum())
        restart = a["done"] & (torch.rand(32, generator=gen) < 0.5)
        a, b = eager.reset(mask=restart), fast.reset(mask=restart)
        assert torch.equal(a["flight"], b["flight"]) and torch.allclose(a["observation"], b["observation"], atol=1e-3)
    assert frozen_steps > 0  # some engines sat frozen with their final window


def test_fast_path_is_automatic_only_for_large_batches():
    assert not make_env(num_envs=4).config.fast
    assert make_env(num_envs=8192).config.fast
    # room for many configurations in one process before dynamo would fall back to eager
    import torch._dynamo.config as dynamo_config

    from torch_student_env.env import FAST_PATH_GRAPHS

    assert dynamo_config.recompile_limit >= FAST_PATH_GRAPHS > 8

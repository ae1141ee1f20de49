"""The compiled fast path: built in the background while the env steps eagerly, equal to eager,
one library per configuration whatever the number of engines, on by default on the CPU. How builds
are shared, interrupted and refused: tests/test_builds.py."""

from __future__ import annotations

import logging

import pytest
import torch

from torch_student_env import compiled, make_env
from torch_student_env.config import FAST_ENV_VAR, WAIT_COMPILED_ENV_VAR

pytestmark = pytest.mark.compiles


def _play_both(eager, fast, steps: int, n: int, gen: torch.Generator) -> tuple[int, int]:
    ended = quiet = 0
    for _ in range(steps):
        # few sales: a new engine fails now and then at any health, so steps where no episode
        # ends need most of the engines to keep flying
        actions = torch.multinomial(torch.tensor([0.84, 0.15, 0.01]), n, replacement=True, generator=gen)
        a, b = eager.step(actions), fast.step(actions)
        assert set(a.keys()) == set(b.keys())
        assert torch.equal(a["done"], b["done"]) and torch.equal(a["flight"], b["flight"])
        assert torch.equal(a["new_rows"], b["new_rows"]) and torch.equal(a["final_flight"], b["final_flight"])
        assert torch.allclose(a["observation"], b["observation"], rtol=1e-5, atol=1e-3)
        assert torch.allclose(a["final_observation"], b["final_observation"], rtol=1e-5, atol=1e-3)
        assert torch.allclose(a["reward"], b["reward"], rtol=1e-5, atol=1e-2)
        assert torch.allclose(a["health"], b["health"], atol=1e-5)
        ended += int(a["done"].sum())
        quiet += int(not a["done"].any())
    return ended, quiet


@pytest.mark.slow  # a real build, every run: its library is removed first
def test_a_new_configuration_steps_eagerly_at_once_then_moves_to_its_library(monkeypatch, caplog):
    """Nobody waits for the compiler: with the configuration's library missing, the first steps
    run eagerly while a separate process builds it; the env moves to it between two steps, and
    the episodes go on as eager ones do. The configuration is test_variants' compiled one, which
    then loads what this built (a cold suite compiles it once)."""
    monkeypatch.delenv(WAIT_COMPILED_ENV_VAR, raising=False)
    n = 16
    kwargs = dict(num_envs=n, seed=5, sim_variants="plausible", privileged=True)
    eager, fast = make_env(fast=False, **kwargs), make_env(fast=True, **kwargs)
    assert not fast.config.wait_compiled
    compiled.library_path(fast._step.key).unlink(missing_ok=True)  # a cold cache, for this configuration
    monkeypatch.setattr(compiled, "_loaded", {})
    started = compiled.stats.started
    with caplog.at_level(logging.INFO, logger="torch_student_env"):
        a, b = eager.reset(), fast.reset()
        assert fast.step_kind == "building" and compiled.stats.started == started + 1
        gen = torch.Generator().manual_seed(n)
        for _ in range(3):  # eager on both sides: the same code, the same numbers
            actions = torch.multinomial(torch.tensor([0.84, 0.15, 0.01]), n, replacement=True, generator=gen)
            a, b = eager.step(actions), fast.step(actions)
            assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["reward"], b["reward"])
        assert fast._step.eager_steps >= 3
        assert fast.wait_compiled() == "compiled"
        ended, _ = _play_both(eager, fast, 40, n, gen)  # the same episodes go on, compiled
    assert ended > 0 and compiled.stats.started == started + 1 and compiled.library_path(fast._step.key).exists()
    messages = [r.getMessage() for r in caplog.records if r.name == "torch_student_env"]
    assert sum("in the background" in m for m in messages) == 1
    assert sum("now runs compiled" in m for m in messages) == 1


@pytest.mark.parametrize("n", [48, 1, 5, 257])  # 257: a library of its own (from compiled.STATIC_MIN_ENVS)
def test_fast_path_matches_eager_at_any_number_of_engines(n):
    before, failed = len(compiled._loaded), compiled.stats.failed
    eager = make_env(num_envs=n, seed=12, fast=False, privileged=True)
    fast = make_env(num_envs=n, seed=12, fast=True, privileged=True)
    assert fast.config.fast and not eager.config.fast
    a, b = eager.reset(), fast.reset()
    assert torch.allclose(a["observation"], b["observation"], rtol=1e-6)
    ended, quiet = _play_both(eager, fast, 40, n, torch.Generator().manual_seed(n))
    # Both kinds of step: with auto-resets, and without, where eager on CPU skips building fresh
    # engines (sim_step) while the compiled step builds them for all N and selects none.
    assert ended > 0 and (quiet > 0 or n > 100)  # hundreds of engines: some episode ends every step
    # one library per configuration below STATIC_MIN_ENVS, whatever the number of engines: 48, 1
    # and 5 engines (and another seed) share the one loaded by the first of these tests
    if n < compiled.STATIC_MIN_ENVS:
        other = make_env(num_envs=n + 3, seed=99, fast=True)
        other.reset()
        other.step(torch.zeros(n + 3, dtype=torch.int64))
    assert len(compiled._loaded) - before <= 1
    assert compiled.stats.failed == failed


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


def test_next_step_restarts_run_inside_the_compiled_step_as_eagerly():
    """The client's view (next-step autoreset, the server's groups): a finished engine asked to
    fly restarts inside the step and flies at once, compiled as eagerly, under partial masks."""
    from torch_student_env.client_view import client_env_options

    kwargs = dict(num_envs=6, seed=21, **client_env_options(True, hidden_state=True, max_steps_per_episode=1000))
    eager, fast = make_env(fast=False, **kwargs), make_env(fast=True, **kwargs)
    eager.reset(), fast.reset()
    assert fast.wait_compiled() == "compiled"
    gen = torch.Generator().manual_seed(4)
    restarted_and_flew = 0
    for _ in range(60):
        actions = torch.multinomial(torch.tensor([0.7, 0.1, 0.2]), 6, replacement=True, generator=gen)
        mask = torch.rand(6, generator=gen) < 0.7
        waiting = mask & eager.current()["done"]  # finished and asked to fly: restart, then fly
        a, b = eager.step(actions, mask=mask), fast.step(actions, mask=mask)
        for key in ("flight", "valid", "done", "new_rows", "flew", "episode_ended"):
            assert torch.equal(a[key], b[key]), key
        assert torch.allclose(a["observation"], b["observation"], rtol=1e-5, atol=1e-3)
        assert torch.allclose(a["reward"], b["reward"], rtol=1e-5, atol=1e-2)
        assert bool((a["flew"] >= waiting).all())  # every waiting engine asked flew its new episode
        restarted_and_flew += int(waiting.sum())
    assert restarted_and_flew > 5


def test_fast_path_is_the_default_on_cpu_at_every_size(monkeypatch):
    monkeypatch.delenv(FAST_ENV_VAR, raising=False)
    for n in (1, 4, 64, 8192):
        assert make_env(num_envs=n).config.fast, n
    assert not make_env(num_envs=4, fast=False).config.fast
    monkeypatch.setenv(FAST_ENV_VAR, "0")
    assert not make_env(num_envs=4).config.fast and make_env(num_envs=4, fast=True).config.fast


def test_the_compiled_step_reads_state_of_any_layout():
    """The library is compiled for contiguous inputs and does not check strides: a state laid
    out otherwise (here a checkpoint whose window has engines innermost, as a restart's once
    was) must still step exactly as eager does."""
    eager, fast = make_env(num_envs=4, seed=8, fast=False), make_env(num_envs=4, seed=8, fast=True)
    eager.reset(), fast.reset()
    actions = torch.tensor([0, 1, 0, 2])
    for _ in range(3):
        eager.step(actions), fast.step(actions)
    state = eager.state_dict()
    window = state["window"]
    state["window"] = window.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # same values, engines innermost
    assert not state["window"].is_contiguous() and torch.equal(state["window"], window)
    fast.load_state_dict(state)
    eager.load_state_dict(eager.state_dict())
    for _ in range(5):
        a, b = eager.step(actions), fast.step(actions)
        assert torch.allclose(a["observation"], b["observation"], rtol=1e-5, atol=1e-3)
        assert torch.allclose(a["final_observation"], b["final_observation"], rtol=1e-5, atol=1e-3)
        assert torch.equal(a["flight"], b["flight"]) and torch.equal(a["done"], b["done"])

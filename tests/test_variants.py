"""The failure model and the plausible-model ensemble: its rules, its draw, and scoring on it."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from torch_student_env import make_env
from torch_student_env.evaluation import evaluate_variants, markdown_variant_table, worst_variant
from torch_student_env.oracle import plan, repair_classes
from torch_student_env.policies import make_policy
from torch_student_env.sim.engine import Dynamics, check_variants, failure_rate
from torch_student_env.sim.params import DATA_LAST_AGE, DATA_LAST_REPAIRS, VARIANT_FIELDS, SimParams
from torch_student_env.sim.variants import PLAUSIBLE, resolve


def _dynamics(**changes) -> Dynamics:
    p = dataclasses.replace(SimParams(), **changes)
    return Dynamics(*(getattr(p, f) for f in VARIANT_FIELDS))


def _rate(health, repairs=0, flight=100, wear=0.01, **changes) -> float:
    t = torch.tensor
    return float(failure_rate(t([health]), t([wear]), t([flight]), t([repairs]), _dynamics(**changes))[0])


def test_a_repaired_engine_is_as_safe_as_a_new_one_with_margin_more_health():
    p = SimParams()
    margin = p.repair_safety_margin
    # after any repair, the rate at health h is the never-repaired rate at h + margin (less its floor)
    for h in (-0.3, 0.0, 0.2, 0.5):
        new = _rate(h + margin, repairs=0) - p.hazard_floor_new
        assert _rate(h, repairs=1) == pytest.approx(new, rel=1e-5)
        assert _rate(h, repairs=5) == _rate(h, repairs=1)
    assert _rate(0.0, repairs=1) < _rate(0.0, repairs=0) / 5  # the data: ~20x fewer failures at equal health


def test_failure_rate_saturates_has_a_floor_for_new_engines_and_extrapolation_terms():
    p = SimParams()
    assert _rate(-5.0) <= (p.hazard_max_per_flight + p.hazard_floor_new) * (1 + 1e-6)  # float32
    assert _rate(-5.0) > 0.99 * p.hazard_max_per_flight  # saturated, far past the health engines reach
    assert _rate(1.0, repairs=0) == pytest.approx(p.hazard_floor_new, rel=0.05)  # healthy and new: the floor
    assert _rate(1.0, repairs=1) < 1e-6  # healthy and repaired: no floor
    # age hazard: nothing up to the last logged age, then linear in the flights past it
    k = 1e-4
    assert _rate(1.0, repairs=1, flight=int(DATA_LAST_AGE), age_hazard_per_flight=k) < 1e-6
    assert _rate(1.0, repairs=1, flight=int(DATA_LAST_AGE) + 100, age_hazard_per_flight=k) == pytest.approx(
        100 * k, rel=1e-3
    )
    # a fading margin: intact up to the last logged repair count, gone after 1 / loss more
    fading = {"margin_loss_per_repair": 0.25}
    assert _rate(0.0, repairs=DATA_LAST_REPAIRS, **fading) == pytest.approx(_rate(0.0, repairs=1), rel=1e-6)
    assert _rate(0.0, repairs=DATA_LAST_REPAIRS + 2, **fading) > _rate(0.0, repairs=1)
    gone = _rate(0.0, repairs=DATA_LAST_REPAIRS + 4, **fading)
    assert gone == pytest.approx(_rate(0.0, repairs=0) - p.hazard_floor_new, rel=1e-5)


def test_check_variants_names_what_differs_and_make_env_refuses_ambiguity():
    base = SimParams()
    assert check_variants([base, dataclasses.replace(base, repair_safety_margin=0.1)])[0] is base
    with pytest.raises(ValueError, match="repair_cost"):
        check_variants([base, dataclasses.replace(base, repair_cost=900.0)])
    with pytest.raises(TypeError, match="non-empty"):
        check_variants([])
    with pytest.raises(ValueError, match="not both"):
        make_env(num_envs=2, sim_params=base, sim_variants="plausible")
    with pytest.raises(ValueError, match="backend='remote'"):
        make_env(num_envs=2, backend="remote", sim_variants="plausible", server_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="unknown sim variants 'nope'"):
        make_env(num_envs=2, sim_variants="nope")
    assert list(resolve("plausible")) == list(PLAUSIBLE) and list(resolve("margin_fades")) == ["margin_fades"]
    for name, params in PLAUSIBLE.items():  # every shipped variant is a valid ensemble member
        check_variants([SimParams(), params]), name


def _variants_by_episode(num_envs: int, steps: int, seed: int = 3, **kwargs) -> torch.Tensor:
    """(steps, num_envs): each engine's variant after each step of a repair-every-step rollout."""
    env = make_env(num_envs=num_envs, seed=seed, sim_variants="plausible", **kwargs)
    env.reset()
    seen = []
    for _ in range(steps):
        env.step(torch.full((num_envs,), 2))  # sell: every step ends an episode and draws a new one
        seen.append(env.backend.sim.engines.variant.clone())
    return torch.stack(seen)


def test_the_variant_draw_depends_on_seed_env_and_episode_only():
    small, large = _variants_by_episode(8, 40), _variants_by_episode(64, 40)
    assert torch.equal(small, large[:, :8])  # batch-size independent
    assert not torch.equal(small, _variants_by_episode(8, 40, seed=4))
    counts = torch.bincount(large.flatten(), minlength=len(PLAUSIBLE))
    expected = large.numel() / len(PLAUSIBLE)  # uniform over the ensemble
    assert ((counts - expected).abs() < 4 * expected**0.5).all(), counts


def test_an_ensemble_engine_plays_exactly_the_variant_it_drew():
    """Engine draws are shared, so an ensemble episode equals the same engine on that variant alone."""
    variants = {"fitted": PLAUSIBLE["fitted"], "margin_fades": PLAUSIBLE["margin_fades"]}
    ens = make_env(num_envs=256, seed=9, sim_variants=variants, autoreset_mode="disabled")
    alone = {
        name: make_env(num_envs=256, seed=9, sim_params=p, autoreset_mode="disabled") for name, p in variants.items()
    }
    ens.reset(), [env.reset() for env in alone.values()]
    drawn = ens.backend.sim.engines.variant
    assert 0 < int(drawn.sum()) < 256
    plan_ = torch.tensor([0] * 6 + [1] + [0] * 5 + [1] + [0] * 20)
    for action in plan_:
        actions = torch.full((256,), int(action))
        td = ens.step(actions)
        single = {name: env.step(actions) for name, env in alone.items()}
        for v, name in enumerate(variants):
            mine = drawn == v
            assert torch.equal(td["reward"][mine], single[name]["reward"][mine])
            assert torch.equal(td["observation"][mine], single[name]["observation"][mine])


@pytest.mark.compiles
def test_the_compiled_step_draws_and_plays_the_same_variants():
    kwargs = dict(num_envs=16, seed=5, sim_variants="plausible", autoreset_mode="same_step")
    eager, fast = make_env(fast=False, **kwargs), make_env(fast=True, **kwargs)
    eager.reset(), fast.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        actions = torch.multinomial(torch.tensor([0.8, 0.15, 0.05]), 16, replacement=True, generator=gen)
        a, b = eager.step(actions), fast.step(actions)
        assert torch.allclose(a["reward"], b["reward"], atol=1e-3)
        assert torch.equal(a["done"], b["done"])
    assert torch.equal(eager.backend.sim.engines.variant, fast.backend.sim.engines.variant)


def test_a_checkpoint_keeps_each_engines_variant():
    env = make_env(num_envs=32, seed=2, sim_variants="plausible")
    env.reset()
    for _ in range(5):
        env.step(torch.full((32,), 2))
    state = env.state_dict()
    after = [env.step(torch.zeros(32, dtype=torch.long))["reward"] for _ in range(15)]
    restored = make_env(num_envs=32, seed=2, sim_variants="plausible")
    restored.load_state_dict(state)
    assert torch.equal(restored.backend.sim.engines.variant, state["backend"]["engines"]["variant"])
    for reward in after:
        assert torch.equal(restored.step(torch.zeros(32, dtype=torch.long))["reward"], reward)


def test_the_oracle_tells_apart_as_many_repair_counts_as_the_failure_rate_does():
    assert repair_classes(SimParams()) == 2
    fading = PLAUSIBLE["margin_fades"]
    assert repair_classes(fading) == DATA_LAST_REPAIRS + 5 + 1
    table = plan(fading, step_size=10, max_flights=200)
    assert table.shape[:2] == (21, repair_classes(fading)) and (table[-1] == 2).all()


def test_evaluate_variants_scores_every_policy_on_every_variant_and_finds_the_worst():
    variants = {"fitted": PLAUSIBLE["fitted"], "old_engines_fail": PLAUSIBLE["old_engines_fail"]}
    policies = {
        "do_nothing": lambda params: make_policy("do_nothing"),
        "oracle": lambda params: make_policy("oracle", params=params),
    }
    results = evaluate_variants(policies, variants, num_envs=64, seed=1)
    assert set(results) == set(policies) and all(set(r) == set(variants) for r in results.values())
    # a never-repaired engine fails long before 360 flights: the age hazard cannot touch it
    assert results["do_nothing"]["fitted"] == results["do_nothing"]["old_engines_fail"]
    name, figures = worst_variant(results["oracle"])
    assert figures["mean_return"] == min(r["mean_return"] for r in results["oracle"].values())
    table = markdown_variant_table(results)
    assert table.splitlines()[0] == "| policy | fitted | old_engines_fail | worst |"
    assert table.splitlines()[2].startswith("| oracle |")  # best worst case first


def test_the_extrapolation_variants_are_what_calibrate_derives_from_the_fitted_model():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "calibrate.py"
    spec = importlib.util.spec_from_file_location("calibrate_script", path)
    calibrate = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = calibrate  # its dataclasses resolve their module by name
    spec.loader.exec_module(calibrate)
    derived = calibrate.extrapolation_variants(SimParams())
    assert PLAUSIBLE["wear_keeps_rising"].wear_rate_rise_past_knots == derived["wear_rate_rise_past_knots"]
    assert PLAUSIBLE["old_engines_fail"].age_hazard_per_flight == derived["age_hazard_per_flight"]
    assert PLAUSIBLE["margin_fades"].margin_loss_per_repair == derived["margin_loss_per_repair"]
    # and old_engines_fail does what it says: an engine repaired at every step fails by 493 half the time
    env = make_env(num_envs=2048, seed=0, sim_params=PLAUSIBLE["old_engines_fail"])
    env.reset()
    failed_by_493 = torch.zeros(2048, dtype=torch.bool)
    alive = torch.ones(2048, dtype=torch.bool)
    for _ in range(50):  # 500 flights
        td = env.step(torch.ones(2048, dtype=torch.long))
        failed_by_493 |= alive & td["episode_failed"] & (td["episode_length"] <= 493)
        alive &= ~td["done"]
    assert abs(failed_by_493.float().mean().item() - 0.5) < 0.05

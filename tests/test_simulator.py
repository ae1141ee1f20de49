"""The challenge engine's invariants over long random rollouts, its calibration, and its configuration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_student_env import FEATURE_NAMES, Action, SimParams, make_env
from torch_student_env.evaluation import run_episodes
from torch_student_env.policies import BASELINES, make_policy
from torch_student_env.sim.engine import dtamb_within_step


def health_share(health, p):
    """The profit share of a flight at `health`, written out from docs/simulator.md, "Rewards"."""
    below = torch.clamp(p.profit_knee_health - health, min=0.0)
    return health + p.profit_flattening * below * below


def _random_actions(n, gen):
    """Mostly fly, sometimes repair, rarely sell: long episodes with many repairs."""
    u = torch.rand(n, generator=gen)
    return torch.where(u < 0.12, int(Action.REPAIR), torch.where(u < 0.14, int(Action.SELL), 0))


def test_invariants_over_long_random_rollouts():
    n, k = 256, 10
    env = make_env(num_envs=n, step_size=k, seed=21, privileged=True, max_steps_per_episode=300)
    p = env.config.sim_params
    gen = torch.Generator().manual_seed(0)
    td = env.reset()
    seen = dict(failed=0, sold=0, truncated=0, repairs=0, first_flight_failures=0)
    for _ in range(400):
        actions = _random_actions(n, gen)
        prev = td
        td = env.step(actions)
        for key, value in td.items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), key
        done, repair, sell = td["done"], actions == Action.REPAIR, actions == Action.SELL
        going, flew = ~done, ~done & ~repair & ~sell
        # health and wear rate change only by flying (down) and by a repair (health back to 1)
        assert (td["health"][flew] < prev["health"][flew]).all()
        assert torch.equal(td["wear_rate"][flew], prev["wear_rate"][flew])
        repaired = going & repair
        assert torch.allclose(td["health"][repaired], 1.0 - k * td["wear_rate"][repaired])
        # within a step, health falls by the wear rate each flight
        steps = td["window_health"][going].diff(dim=1)[:, 1:]
        assert torch.allclose(steps, -td["wear_rate"][going].unsqueeze(1).expand_as(steps), atol=1e-5)
        # a fly step earns its flights' profit (health times the profit at health 1, flattened
        # below the knee), give or take noise
        share = health_share(td["window_health"], p)
        profit = p.profit_per_flight * share[flew].sum(dim=1)
        assert ((td["reward"][flew] - profit).abs() < 6 * p.profit_noise_std * k**0.5).all()
        profit = p.profit_per_flight * share[repaired].sum(dim=1) - p.repair_cost
        assert ((td["reward"][repaired] - profit).abs() < 6 * p.profit_noise_std * k**0.5).all()
        # episode ends pay exactly what the server pays
        failed = td["episode_failed"]
        assert set(td["reward"][failed].tolist()) <= {p.failure_reward, p.first_flight_failure_reward}
        sold = done & sell & td["terminated"] & ~failed
        assert (td["reward"][sold] == p.sale_reward).all()
        assert (td["episode_length"][td["truncated"]] == 300).all()
        assert not (td["terminated"] & td["truncated"]).any()
        seen["failed"] += int(failed.sum())
        seen["first_flight_failures"] += int((failed & (td["reward"] == p.first_flight_failure_reward)).sum())
        seen["sold"] += int(sold.sum())
        seen["truncated"] += int(td["truncated"].sum())
        seen["repairs"] += int(repaired.sum())
    # the rollout exercised every ending and many repairs
    assert min(seen.values()) > 3, seen


def test_first_flight_failure_returns_no_row_and_keeps_the_window():
    """The server's quirk: a failure on a step's first flight ends with reward 0 and no new row."""
    env = make_env(num_envs=512, seed=3, privileged=True, autoreset_mode="disabled")
    td = env.reset()
    p = env.config.sim_params
    alive = torch.ones(512, dtype=torch.bool)
    for _ in range(60):
        prev, td = td, env.step(torch.zeros(512, dtype=torch.long))
        quirk = alive & td["episode_failed"] & (td["reward"] == p.first_flight_failure_reward)
        alive &= ~td["done"]
        if quirk.any():
            i = int(quirk.nonzero()[0, 0])
            assert torch.equal(td["observation"][i], prev["observation"][i])
            assert td["episode_length"][i] == prev["flight"][i, -1] + 1  # it flew (and failed) the next flight
            return
    raise AssertionError("no first-flight failure in 60 steps of 512 engines")


def test_a_failing_step_returns_the_rows_before_the_failing_flight():
    """As on the real server (`rows` of the never-repaired log): a step of 10 flights in which the
    engine fails returns 0 to 9 rows, the flights before the failing one; the counter reads the
    failing flight; a failure on the first flight returns none."""
    env = make_env(num_envs=2048, seed=4, autoreset_mode="disabled")
    newest = env.reset()["flight"][:, -1]
    alive = torch.ones(2048, dtype=torch.bool)
    counts = torch.zeros(11, dtype=torch.long)
    for _ in range(30):
        td = env.step(torch.zeros(2048, dtype=torch.long))
        failed = alive & td["episode_failed"]
        added = (td["flight"] > newest.unsqueeze(1)).sum(1)
        counts += torch.bincount(added[failed], minlength=11)
        # the failing flight is the one after the last row returned
        assert torch.equal(td["episode_length"][failed], newest[failed] + added[failed] + 1)
        newest, alive = td["flight"][:, -1], alive & ~td["done"]
    assert counts.sum() > 1500 and counts[10] == 0  # never a whole step's rows
    assert (counts[:10] > 50).all()  # every count from 0 (first flight) to 9 happens


def test_dtamb_restarts_each_step_and_its_scan_equals_the_recursion():
    p = SimParams()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(50, 300, generator=gen)
    scanned, first = dtamb_within_step(z, p)
    x = torch.full((300,), p.dtamb_floor)
    sequential = [x]
    for j in range(1, 50):
        x = p.dtamb_mean + p.dtamb_persistence * (x - p.dtamb_mean) + p.dtamb_innovation_std * z[j]
        sequential.append(x)
    expected = torch.stack(sequential).clamp(p.dtamb_floor, p.dtamb_ceiling)
    assert torch.allclose(scanned, expected, atol=1e-4)
    assert first[0].all() and not first[1:].any()

    env = make_env(num_envs=2048, seed=2)
    env.reset()
    dtamb = env.step(torch.zeros(2048, dtype=torch.long))["observation"][..., FEATURE_NAMES.index("DTAMB")]
    assert (dtamb[:, 0] == p.dtamb_floor).all()  # every step starts at the floor
    means = dtamb.mean(0)
    assert (means.diff() > 0).all() and means[-1] > 9.6  # relaxes towards the mean
    assert dtamb.min() >= p.dtamb_floor and dtamb.max() <= p.dtamb_ceiling


def test_wear_sensors_track_health_and_the_flat_ones_do_not():
    """HP_Nmech, corrected for DTAMB, regresses on health with the model's slope; LP_Nmech does not."""
    env = make_env(num_envs=512, seed=8, privileged=True)
    env.reset()
    obs, health = [], []
    for _ in range(12):
        td = env.step(torch.zeros(512, dtype=torch.long))
        keep = td["valid"] & ~td["done"].unsqueeze(1)
        obs.append(td["observation"][keep]), health.append(td["window_health"][keep])
    obs, health = torch.cat(obs), torch.cat(health)
    p = SimParams()
    dtamb = obs[:, FEATURE_NAMES.index("DTAMB")] - p.dtamb_reference

    def slope(name):
        i = FEATURE_NAMES.index(name)
        y = obs[:, i] - p.sensor_per_dtamb[i] * dtamb
        x_c, y_c = health - health.mean(), y - y.mean()
        return ((x_c * y_c).sum() / (x_c * x_c).sum()).item()

    # over health 0.2-1 the quadratic term adds at most 30 % to the linear slope
    assert 0.9 * p.sensor_per_health[1] < slope("HP_Nmech") < 1.3 * p.sensor_per_health[1] + 100
    assert abs(slope("LP_Nmech")) < 1.0  # rpm per unit health: flat


def test_dominant_exploration_schedule_reproduces_the_shipped_targets():
    """The real episodes' reward bins (shipped as derived figures) under the agent's schedule."""
    import json
    from importlib.resources import files

    from torch_student_env.fidelity import replay, summarize

    real = json.loads(files("torch_student_env.fidelity").joinpath("targets.json").read_text())["ExplorationAgent"]
    plan = (0,) * 6 + ((1,) + (0,) * 5) * 10
    sim = summarize(replay([plan], seeds=400, seed=5)[0])
    for key in [f"0,{s}" for s in range(6)] + [f"{k},{s}" for k in (1, 2, 3) for s in range(5)]:
        real_mean, sim_mean = real["fly"][key][0], sim["fly"][key][0]
        assert abs(sim_mean - real_mean) <= 0.10 * max(abs(real_mean), 100), (key, real_mean, sim_mean)
    for k in ("0", "1", "2", "3"):
        assert abs(sim["repair"][k][0] / real["repair"][k][0] - 1) < 0.05, k
    sim_flights, real_flights = torch.tensor(sim["failure_flights"]), torch.tensor(real["failure_flights"])
    assert abs(sim_flights.median() / real_flights.median() - 1) < 0.1


@pytest.mark.slow
def test_calibration_baselines_ranked_on_1024_episodes(capsys):
    means = {}
    for name in BASELINES:
        env = make_env(num_envs=1024, seed=123, privileged=True)
        eps = run_episodes(env, make_policy(name, env), episodes_per_env=1)
        assert len(eps) == 1024
        means[name] = (eps.returns.mean().item(), (eps.returns.std() / len(eps) ** 0.5).item())
    with capsys.disabled():
        print(
            "\nmean return on 1,024 episodes (seed 123): "
            + ", ".join(f"{k} {m:.0f}±{s:.0f}" for k, (m, s) in means.items())
        )
    m = {k: v[0] for k, v in means.items()}
    se = max(v[1] for v in means.values())
    assert m["oracle"] > m["threshold"] + 4 * se
    assert m["threshold"] > m["do_nothing"] + 4 * se and m["time_based"] > m["do_nothing"] + 4 * se
    assert m["do_nothing"] > m["random"] + 4 * se


def test_sim_params_change_dynamics():
    """A custom SimParams reaches the simulator: a harsher failure reward shows in the rewards."""
    base = make_env(num_envs=64, seed=1)
    harsh = make_env(num_envs=64, seed=1, sim_params=dataclasses.replace(SimParams(), failure_reward=-5000.0))
    base.reset(), harsh.reset()
    for _ in range(60):
        a = base.step(torch.zeros(64, dtype=torch.long))
        b = harsh.step(torch.zeros(64, dtype=torch.long))
        assert torch.equal(a["episode_failed"], b["episode_failed"])
        f = a["episode_failed"] & (a["reward"] == -1000.0)
        if f.any():
            assert (b["reward"][f] == -5000.0).all()
            return
    raise AssertionError("no failure in 60 steps")


def test_cpu_eager_skips_give_the_results_of_the_sync_free_path(monkeypatch):
    """Eager CPU steps skip the repair draws and the fresh engines when no engine repairs or
    ends (`engine.none_of`); forcing the sync-free path (computed for all, selected) must change
    no bit, over steps with and without repairs, sales and failures."""
    from torch_student_env.sim import engine

    def rollout():
        env = make_env(num_envs=3, seed=8, privileged=True, max_steps_per_episode=120)
        gen = torch.Generator().manual_seed(4)
        outputs = [env.reset()]
        for _ in range(60):
            outputs.append(env.step(_random_actions(3, gen)))
        return outputs

    skipped = []
    none_of = engine.none_of
    monkeypatch.setattr(engine, "none_of", lambda mask: skipped.append(none_of(mask)) or skipped[-1])
    lazy = rollout()
    monkeypatch.setattr(engine, "none_of", lambda mask: False)
    full = rollout()
    assert any(skipped) and not all(skipped)  # both branches ran, at both call sites over 60 steps
    for a, b in zip(lazy, full, strict=True):
        assert (a == b).all(), [k for k in a.keys() if not torch.equal(a[k], b[k])]
    steps = lazy[1:]
    assert sum(int(td["done"].sum()) for td in steps) > 0
    assert int(steps[-1]["repairs"].sum()) + sum(int(td["episode_repairs"].sum()) for td in steps) > 0


def test_failures_follow_the_safety_state_not_the_profit_health():
    """Safety is a damage state of its own: an engine whose profit health is far below 0 but whose
    safety is 1 does not fail, and one with safety far below 0 fails whatever its health."""
    from torch_student_env.sim.engine import SimTables, advance, reset_engines

    tables = SimTables(SimParams(), torch.device("cpu"))
    state, _ = reset_engines(torch.arange(512, dtype=torch.int32), tables)
    fly, active = torch.zeros(512, dtype=torch.long), torch.ones(512, dtype=torch.bool)
    worn_profit = dataclasses.replace(state, health=torch.full((512,), -1.0), safety=torch.ones(512))
    _, transition = advance(worn_profit, fly, active, 10, 1000, tables)
    assert not transition.failed.any()
    assert (transition.reward < 0).all()  # the profit of a health below 0 is a loss
    unsafe = dataclasses.replace(state, health=torch.ones(512), safety=torch.full((512,), -1.0))
    _, transition = advance(unsafe, fly, active, 10, 1000, tables)
    saturated = 1 - torch.exp(torch.tensor(-10 * tables.params.hazard_max_per_flight))  # 10 flights at the cap
    assert transition.failed.float().mean() > saturated - 0.05


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_safety_falls_at_the_mean_rate_times_the_spread_factor_to_its_share(share):
    """A repair draws one spread factor f: health then falls at base * f per flight, safety at
    base * f ** safety_wear_share (1: safety is health; 0: the segment's mean rate)."""
    from torch_student_env.sim.engine import SimTables, wear_rate_after_repair

    params = dataclasses.replace(SimParams(), safety_wear_share=share)
    env = make_env(num_envs=256, seed=4, privileged=True, sim_params=params)
    env.reset()
    fly, repair = torch.zeros(256, dtype=torch.long), torch.ones(256, dtype=torch.long)
    for _ in range(6):
        env.step(fly)
    env.step(repair)
    td = env.step(fly)
    engines = env.backend.sim.engines
    alive = ~td["done"] & (td["repairs"] == 1) & (td["age"] == 80)  # repaired at 60, as planned
    assert alive.sum() > 200
    base = wear_rate_after_repair(torch.tensor([60.0]), SimTables(params, torch.device("cpu")))
    factor = engines.wear_rate[alive] / base
    assert factor.std() > 0.05  # the repairs' spread is there to see (0.08)
    torch.testing.assert_close(engines.safety_rate[alive], base * factor**share)
    torch.testing.assert_close(engines.safety[alive], 1.0 - 20 * engines.safety_rate[alive])
    torch.testing.assert_close(engines.health[alive], 1.0 - 20 * engines.wear_rate[alive])


def test_profit_flattens_below_the_knee_and_is_health_above_it():
    """Two engines of one seed at a health above the knee and one below it: the step rewards of a
    flattened model differ from the linear one's only where health is below the knee."""
    flat = dataclasses.replace(SimParams(), profit_knee_health=0.3, profit_flattening=0.6)
    linear = dataclasses.replace(flat, profit_flattening=0.0)
    fly = torch.zeros(64, dtype=torch.long)
    envs = [make_env(num_envs=64, seed=9, privileged=True, sim_params=q, fast=False) for q in (flat, linear)]
    for env in envs:
        env.reset()
    checked_above = checked_below = 0
    for _ in range(11):
        a, b = (env.step(fly) for env in envs)
        both = ~a["done"] & ~b["done"]
        health = a["window_health"][:, -10:]
        above, below = both & (health.min(1).values > 0.3), both & (health.max(1).values < 0.3)
        torch.testing.assert_close(a["reward"][above], b["reward"][above])
        gain = flat.profit_per_flight * 0.6 * ((0.3 - health[below]) ** 2).sum(1)
        torch.testing.assert_close(a["reward"][below] - b["reward"][below], gain, rtol=1e-4, atol=1e-3)
        checked_above, checked_below = checked_above + int(above.sum()), checked_below + int(below.sum())
    assert checked_above > 100 and checked_below > 20

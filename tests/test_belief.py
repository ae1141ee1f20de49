"""The belief policy: the oracle's plan at a state a player can estimate (rows and counters)."""

from __future__ import annotations

import pytest
import torch

from torch_student_env import Action, make_env
from torch_student_env.evaluation import run_episodes, summarize
from torch_student_env.policies import BeliefPolicy, make_policy, sensor_health


def test_the_estimate_follows_the_hidden_state_without_reading_it():
    """Over a threshold-policy rollout (repairs at many ages): health within a few hundredths and
    the wear rate within its repair spread, from rows and player-side counters alone."""
    env = make_env(num_envs=256, seed=5, privileged=True)
    belief, driver = BeliefPolicy(), make_policy("threshold")
    td = env.reset()
    errors_h, errors_r = [], []
    for _ in range(30):
        public = td.exclude("health", "wear_rate", "window_health")  # what a player has
        health, rate = belief.estimate(public)
        errors_h.append((health - td["health"]).abs())
        errors_r.append(((rate - td["wear_rate"]) / td["wear_rate"]).abs())
        td = env.step(driver(td))
    h, r = torch.cat(errors_h), torch.cat(errors_r)
    assert h.median() < 0.03 and h.quantile(0.9) < 0.1, (h.median(), h.quantile(0.9))
    assert r.median() < 0.12, r.median()  # the repair spread alone is 0.16


def test_the_oracles_planned_value_is_what_it_earns_in_the_simulator():
    """The plan's coordinates (age, repairs, flights since repair, spread factor) are the engine's
    whole state: with the repair draws planned for, the value the dynamic programme expects at a
    fresh engine is the mean return the oracle earns on the simulator, within its noise."""
    from torch_student_env.oracle import LOG_FACTOR_GRID, OraclePolicy, factor_weights, plan_values
    from torch_student_env.sim.params import SimParams

    params = SimParams()
    values = plan_values(params, 10, 1000, repair_draws=True)  # (T + 1, 3, C, S, F)
    fresh = factor_weights(params.wear_spread_new)
    expected = float((values[0, :, 0, 0].max(0).values.double() * fresh).sum())
    env = make_env(num_envs=2048, seed=31, privileged=True, fast=False)
    episodes = run_episodes(env, OraclePolicy(params, repair_draws=True), episodes_per_env=1)
    figures = summarize(episodes)
    # The plan counts -1,000 for every failure (and the repair cost on a failing repair step);
    # the server pays 0 for a failure on a step's first flight: the simulator earns a little more
    # (4,740 on 12,288 engines of seeds 32-34 against 4,732 planned; these 2,048: 4,694).
    assert abs(figures["mean_return"] - expected) < figures["ci95"] + 40, (figures, expected)
    assert figures["failure_rate"] > 0.02 and figures["mean_repairs"] > 2  # a plan that repairs and risks
    assert len(LOG_FACTOR_GRID) == fresh.numel() and abs(float(fresh.sum()) - 1) < 1e-9


def test_belief_plays_without_privileged_keys_and_near_the_oracle():
    plain = make_env(num_envs=512, seed=77)
    belief = summarize(run_episodes(plain, make_policy("belief", plain), episodes_per_env=1))
    privileged = make_env(num_envs=512, seed=77, privileged=True)
    oracle = summarize(run_episodes(privileged, make_policy("oracle", privileged), episodes_per_env=1))
    threshold = summarize(run_episodes(plain, make_policy("threshold", plain), episodes_per_env=1))
    assert belief["mean_return"] > threshold["mean_return"]
    assert belief["mean_return"] == pytest.approx(oracle["mean_return"], rel=0.03)


def test_rule_health_reads_only_the_rows_since_the_last_repair():
    """A window longer than a step holds rows of the engine's life before its last repair: the
    threshold rule's health reads the rows since the repair when the counters are there."""
    env = make_env(num_envs=256, seed=8, privileged=True, history=30)
    fly, repair = torch.zeros(256, dtype=torch.long), torch.ones(256, dtype=torch.long)
    td = env.reset()
    for _ in range(8):
        td = env.step(fly)
    td = env.step(repair)  # repairs, then flies this step's 10 flights: 20 of the 30 rows are older
    alive = ~td["done"]
    counters = ("age", "since_repair", "repairs")
    public = td.exclude("health", "wear_rate", "window_health")
    since = sensor_health(public)[alive]
    mixed = sensor_health(public.exclude(*counters))[alive]
    truth = td["window_health"][alive][:, -10:].mean(1)  # the health of the flights since the repair
    assert (since - truth).abs().mean() < 0.03, (since - truth).abs().mean()
    assert (mixed - truth).mean() < -0.1  # the old, worn rows pull the blind average down


def test_rule_health_is_unchanged_where_a_window_holds_one_step():
    env = make_env(num_envs=128, seed=9)
    rule = make_policy("threshold", env)
    td = env.reset()
    for _ in range(40):
        assert torch.equal(sensor_health(td), sensor_health(td.exclude("age", "since_repair", "repairs")))
        td = env.step(rule(td))
    assert td["repairs"].sum() > 0  # the rollout did repair


def test_threshold_rule_plays_the_same_with_any_longer_window():
    """The rule reads its tuned 10 newest rows: a longer client-side memory changes none of its
    actions (a blind average over 100 rows would lag the wear and fail engines)."""
    results = []
    for history in (10, 100):
        env = make_env(num_envs=128, seed=12, history=history)
        results.append(run_episodes(env, make_policy("threshold", env), episodes_per_env=1))
    assert torch.equal(results[0].returns, results[1].returns)
    assert torch.equal(results[0].repairs, results[1].repairs) and results[0].repairs.sum() > 0


def test_plan_values_are_the_plan_and_the_estimate_gives_its_spread():
    from torch_student_env.oracle import plan, plan_values
    from torch_student_env.policies import estimate_state
    from torch_student_env.sim.engine import SimTables
    from torch_student_env.sim.params import SimParams

    params = SimParams()
    values = plan_values(params, 10, 200)  # a short horizon: the same code, a smaller table
    assert torch.equal(values.argmax(1).to(torch.int8), plan(params, 10, 200))
    assert (values[-1, 2] == params.sale_reward).all() and torch.isinf(values[-1, :2]).all()
    env = make_env(num_envs=64, seed=3, history=50)
    td, belief = env.reset(), make_policy("belief", env)
    for _ in range(15):
        td = env.step(belief(td))
    tables = SimTables(params, torch.device("cpu"))
    health, rate, rate_std = estimate_state(td, params, tables, with_spread=True)
    assert torch.equal(health, estimate_state(td, params, tables)[0]) and torch.equal(rate, belief.estimate(td)[1])
    # the rows narrow the prior's spread, never widen it
    prior_std = torch.where(td["repairs"] > 0, params.wear_spread_repair, params.wear_spread_new)
    assert (rate_std > 0).all() and (rate_std <= prior_std * 0.04).all()  # 0.04: above any wear rate


def test_averaging_the_plan_over_no_spread_is_the_belief_policy():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "belief_uncertainty.py"
    command = [sys.executable, str(script), "--episodes", "64", "--history", "30", "--widen", "1e-6"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "| QMDP, spread × 1e-06 |" in out and out.rstrip().endswith("| +0.0 ± 0.0 |")


def test_the_counter_schedule_reads_the_counters_alone():
    from torch_student_env.policies import CounterSchedulePolicy

    env = make_env(num_envs=64, seed=8)
    schedule, td = CounterSchedulePolicy(), env.reset()
    repairs_at: dict[int, set[int]] = {}
    for _ in range(30):
        action = schedule(td)
        blind = td.clone()
        blind["observation"].normal_()  # other rows, the same counters: the same actions
        assert torch.equal(schedule(blind), action)
        for r, since in zip(td["repairs"][action == Action.REPAIR].tolist(),
                            td["since_repair"][action == Action.REPAIR].tolist(), strict=True):  # fmt: skip
            repairs_at.setdefault(r, set()).add(since)
        td = env.step(action)
    # a schedule: engines with the same repair count repair after the same flights, whatever
    # their own wear; several repairs are planned
    assert len(repairs_at) >= 3 and all(len(flights) == 1 for flights in repairs_at.values())

"""The model's invariants over long random rollouts, its calibration, and its configuration."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torch_student_env import FEATURE_NAMES, Action, SimParams, make_env
from torch_student_env.evaluate import run_episodes
from torch_student_env.policies import BASELINES, make_policy


def _random_actions(n, gen):
    """Mostly fly, sometimes repair, rarely sell: long episodes with many repairs."""
    u = torch.rand(n, generator=gen)
    return torch.where(u < 0.12, int(Action.REPAIR), torch.where(u < 0.14, int(Action.SELL), 0))


def test_invariants_over_long_random_rollouts():
    n, k = 256, 10
    env = make_env(num_envs=n, step_size=k, seed=21, privileged=True, max_steps_per_episode=600)
    p = env.config.sim_params
    max_profit_per_step = k * (p.revenue_per_flight + 5 * p.revenue_noise_std)
    gen = torch.Generator().manual_seed(0)
    td = env.reset()
    seen = dict(failed=0, sold=0, truncated=0, repairs=0)
    for _ in range(400):
        actions = _random_actions(n, gen)
        prev = td
        td = env.step(actions)
        for key, value in td.items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), key
        done, repair = td["done"], actions == Action.REPAIR
        going = ~done
        # health never exceeds its cap; the cap never rises within an episode
        assert (td["health"] <= td["health_cap"] + 1e-6).all()
        assert (td["health_cap"][going] <= prev["health_cap"][going]).all()
        # health only rises through a repair
        flew = going & ~repair
        assert (td["health"][flew] <= prev["health"][flew]).all()
        # a repair strictly lowers the cap whenever there was damage above the floor
        hurt = going & repair & (prev["health"] < prev["health_cap"] - 1e-4)
        assert (td["health_cap"][hurt] < prev["health_cap"][hurt]).all()
        # within the flights of one step, health falls monotonically
        new_rows = td["window_health"][going][:, 1:]
        assert (new_rows[:, 1:] <= new_rows[:, :-1] + 1e-6).all()
        # terminal rewards: failure costs the penalty, a sale pays a bounded salvage
        failed, sold = td["episode_failed"], done & (actions == Action.SELL) & td["terminated"]
        assert (td["reward"][failed] <= -p.failure_penalty + max_profit_per_step).all()
        assert ((td["reward"][sold] > 0) & (td["reward"][sold] <= p.salvage_new)).all()
        assert (td["episode_length"][td["truncated"]] == 600).all()
        assert not (td["terminated"] & td["truncated"]).any()
        seen["failed"] += int(failed.sum())
        seen["sold"] += int(sold.sum())
        seen["truncated"] += int(td["truncated"].sum())
        seen["repairs"] += int(hurt.sum())
    # the rollout exercised every ending and many repairs
    assert min(seen.values()) > 5, seen


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
    assert m["oracle"] > m["time_based"] + 4 * se
    assert m["time_based"] > m["do_nothing"] + 4 * se
    assert m["time_based"] > m["random"] + 4 * se


def test_sensors_track_health_beyond_noise():
    """Within cruise, the context-corrected EGT proxy regresses on health with a clear slope."""
    env = make_env(num_envs=512, seed=8, privileged=True)
    env.reset()
    obs, health = [], []
    for _ in range(20):
        td = env.step(torch.zeros(512, dtype=torch.long))
        keep = td["valid"] & ~td["done"].unsqueeze(1)
        obs.append(td["observation"][keep])
        health.append(td["window_health"][keep])
    obs, health = torch.cat(obs), torch.cat(health)
    cruise = obs[:, FEATURE_NAMES.index("phase_type")] == 0
    p = SimParams()
    egt = obs[cruise, FEATURE_NAMES.index("LPT_Tin")]
    egt = egt - p.dtamb_sensitivity[3] * (obs[cruise, FEATURE_NAMES.index("DTAMB")] - p.dtamb_reference)
    x = 1.0 - health[cruise]
    x_c, y_c = x - x.mean(), egt - egt.mean()
    slope = (x_c * y_c).sum() / (x_c * x_c).sum()
    resid = y_c - slope * x_c
    stderr = (resid.pow(2).sum() / (len(x) - 2) / (x_c * x_c).sum()).sqrt()
    # one unit of damage raises cruise EGT by tens of K, far beyond the 2.5 K sensor noise
    assert slope > 20 and slope / stderr > 50, (slope.item(), stderr.item())


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(num_envs=0), ValueError, "num_envs must be >= 1, got 0"),
        (dict(num_envs=2.0), TypeError, "num_envs must be an int"),
        (dict(step_size=51), ValueError, "step_size must be in \\[1, 50\\], got 51"),
        (dict(history=0), ValueError, "history must be in"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(device="gpu7"), ValueError, "device must name a torch device"),
        (dict(max_steps_per_episode=0), ValueError, "max_steps_per_episode"),
        (dict(backend="cloud"), ValueError, "backend must be one of"),
        (dict(server_url="http://127.0.0.1:1"), TypeError, "only apply to backend='remote'"),
    ],
)
def test_config_errors_name_the_bad_value(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_env(**kwargs)


def test_sim_params_validation():
    with pytest.raises(ValueError, match="repair_restore_high must be < 1"):
        dataclasses.replace(SimParams(), repair_restore_high=1.0)
    with pytest.raises(ValueError, match="7 values"):
        dataclasses.replace(SimParams(), noise_std=(1.0,))
    with pytest.raises(ValueError, match="phase_probs"):
        dataclasses.replace(SimParams(), phase_probs=(0.5, 0.5, 0.5))


def test_sim_params_change_dynamics():
    """A custom SimParams reaches the simulator: a bigger failure penalty shows in the rewards."""
    base = make_env(num_envs=64, seed=1)
    harsh = make_env(num_envs=64, seed=1, sim_params=dataclasses.replace(SimParams(), failure_penalty=50000.0))
    base.reset(), harsh.reset()
    for _ in range(60):
        a = base.step(torch.zeros(64, dtype=torch.long))
        b = harsh.step(torch.zeros(64, dtype=torch.long))
        assert torch.equal(a["episode_failed"], b["episode_failed"])
        if a["episode_failed"].any():
            f = a["episode_failed"]
            assert torch.allclose(b["reward"][f] - a["reward"][f], torch.full_like(a["reward"][f], -40000.0))
            return
    raise AssertionError("no failure in 60 steps")

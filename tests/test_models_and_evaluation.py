"""The CNN policy's inputs and masking, the evaluator's metrics, and determinism."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from torch_student_env import Action, SimParams, make_env
from torch_student_env.evaluation import (
    Episodes,
    challenge_score,
    evaluate_policies,
    markdown_table,
    paired_difference,
    run_episodes,
    run_stream,
    summarize,
)
from torch_student_env.models import ActorCritic, QNetwork
from torch_student_env.policies import make_policy


def _rollout_td(n=8, steps=3, seed=0):
    env = make_env(num_envs=n, seed=seed)
    td = env.reset()
    for _ in range(steps):
        td = env.step(torch.zeros(n, dtype=torch.long))
    return env, td


@pytest.mark.parametrize("model_cls", [ActorCritic, QNetwork])
def test_cnn_accepts_windows_and_single_rows(model_cls):
    torch.manual_seed(0)
    model = model_cls()
    _, td = _rollout_td()
    window_actions = model.act(td)
    assert window_actions.shape == (8,) and window_actions.dtype == torch.int64
    assert ((window_actions >= 0) & (window_actions < 3)).all()
    single = TensorDict({"observation": td["row"], "valid": td["valid"][:, -1], "flight": td["flight"][:, -1]}, [8])
    row_actions = model.act(single)
    assert row_actions.shape == (8,)
    # a single row is exactly a window of one row
    one_window = TensorDict(
        {"observation": td["observation"][:, -1:], "valid": td["valid"][:, -1:], "flight": td["flight"][:, -1:]}, [8]
    )
    if model_cls is ActorCritic:
        _, logp, ent, value = model.get_action_and_value(single, row_actions)
        _, logp_w, _, value_w = model.get_action_and_value(one_window, row_actions)
        assert torch.allclose(logp, logp_w) and torch.allclose(value, value_w)
        assert (logp <= 0).all() and torch.isfinite(ent).all()
    else:
        assert torch.allclose(model(single), model(one_window))


def test_masked_rows_do_not_change_the_output():
    torch.manual_seed(0)
    model = ActorCritic()
    env = make_env(num_envs=4, seed=3)
    td = env.reset()  # one valid row, nine padding rows
    td = env.step(torch.zeros(4, dtype=torch.long), step_size=4)  # five valid rows
    model.trunk.norm.update(td["observation"], td["valid"])
    garbage = td.clone()
    noise = torch.randn_like(garbage["observation"]) * 1e4
    garbage["observation"] = torch.where(garbage["valid"].unsqueeze(-1), garbage["observation"], noise)
    a, b = (
        model.get_action_and_value(td, torch.zeros(4, dtype=torch.long)),
        model.get_action_and_value(garbage, torch.zeros(4, dtype=torch.long)),
    )
    assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    # ...while a change to a valid row does change it
    changed = td.clone()
    changed["observation"][:, -1, 3] += 50.0
    assert not torch.equal(model.get_value(changed), model.get_value(td))


def test_feature_norm_statistics_match_direct_computation():
    model = ActorCritic()
    _, td = _rollout_td(n=64, steps=5)
    norm = model.trunk.norm
    half = td["observation"].shape[0] // 2
    norm.update(td["observation"][:half], td["valid"][:half])
    norm.update(td["observation"][half:], td["valid"][half:])
    rows = td["observation"][td["valid"]]
    expected_mean = rows[:, [0, 1, 2, 3, 4, 5, 6, 8]].double().mean(0)  # every column but phase_type
    expected_var = rows[:, [0, 1, 2, 3, 4, 5, 6, 8]].double().var(0, unbiased=False)
    assert torch.allclose(norm.mean.double(), expected_mean, rtol=1e-4)
    assert torch.allclose(norm.var.double(), expected_var, rtol=1e-2)
    assert norm.count == len(rows)


def test_player_keys_reach_the_head_only_when_asked():
    _, td = _rollout_td(n=8, steps=3)
    plain, keyed = ActorCritic(), ActorCritic(player_keys=True)
    changed = td.clone()
    changed["repairs"] = changed["repairs"] + 3
    changed["since_repair"] = changed["since_repair"] + 50
    assert torch.equal(plain.get_value(changed), plain.get_value(td))
    assert not torch.equal(keyed.get_value(changed), keyed.get_value(td))


def test_challenge_score_is_the_last_100_of_a_stream():
    """Two envs sell at once (150), two fly 3 steps first: in a stream on 4 envs the short
    episodes finish 4 times as often, so they are 80 % of the last 100, as on the leaderboard."""
    index = torch.arange(4)

    def policy(td):
        long_done = td["flight"][:, -1] >= 30
        return torch.where((index < 2) | long_done, int(Action.SELL), int(Action.DO_NOTHING))

    stream = run_stream(policy, num_envs=4, last=100, seed=3)
    assert len(stream) >= 100 and (stream.finish_step.diff() >= 0).all()  # in the order they ended
    last = stream.returns[-100:]
    short = int((last == 150.0).sum())
    assert 78 <= short <= 82, short
    score = challenge_score(stream)
    assert score["score_total"] == pytest.approx(last.double().sum().item())
    assert score["score_mean"] == pytest.approx(score["score_total"] / 100)
    # the parallel evaluation weighs each env's first episode equally: half short, half long
    parallel = summarize(run_episodes(make_env(num_envs=4, seed=3), policy, episodes_per_env=1))
    assert parallel["mean_return"] > score["score_mean"] + 200


def test_summarize_by_hand():
    returns = torch.arange(6, dtype=torch.float32) * 10.0
    eps = Episodes(
        returns,
        torch.ones(6, dtype=torch.long),
        torch.zeros(6, dtype=torch.long),
        torch.zeros(6, dtype=torch.bool),
        torch.zeros(6, dtype=torch.long),
    )
    s = summarize(eps)
    assert s["mean_return"] == pytest.approx(25.0)
    # sample std of 0, 10, ..., 50 is 18.708; 95 % CI = 1.96 * 18.708 / sqrt(6)
    assert s["ci95"] == pytest.approx(1.96 * 18.70829 / 6**0.5, rel=1e-4)
    table = markdown_table({"a": s})
    assert "| a |" in table and "25 ± 15" in table


def test_evaluation_is_deterministic_and_paired():
    def once():
        env = make_env(num_envs=32, seed=77, privileged=True)
        return run_episodes(env, make_policy("time_based", env), episodes_per_env=4)

    a, b = once(), once()
    assert torch.equal(a.returns, b.returns) and torch.equal(a.finish_step, b.finish_step)
    assert len(a) == 128 and a.lengths.min() >= 0
    # returns agree with lengths and flags: at most ~65 profit per flight (a repaired engine's 50
    # plus noise), less the repairs; a failure's step is worth -1,000 and a sale 150
    assert a.failed.any() and (~a.failed).any()
    cost = SimParams().repair_cost * a.repairs
    assert (a.returns[a.failed] <= 65.0 * a.lengths[a.failed] - cost[a.failed] - 1000).all()
    assert (a.returns[~a.failed] <= 65.0 * a.lengths[~a.failed] - cost[~a.failed] + 150).all()


def test_paired_difference_by_hand_and_in_the_table():
    a = torch.tensor([10.0, 20.0, 30.0, 40.0])
    b = torch.tensor([8.0, 21.0, 25.0, 40.0])  # differences 2, -1, 5, 0: mean 1.5, sample std 2.6458
    d = paired_difference(a, b)
    assert d["paired_diff"] == pytest.approx(1.5)
    assert d["paired_ci95"] == pytest.approx(1.96 * 2.645751 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(a, b[:3])
    results = evaluate_policies(
        {"fly": make_policy("do_nothing"), "rule": make_policy("time_based")},
        num_envs=16,
        seed=5,
        stream_envs=1,
        score_episodes=4,  # a short challenge-score stream: the test is about the paired column
        paired_with="rule",
    )
    assert results["rule"]["paired_diff"] == 0.0 and results["rule"]["paired_ci95"] == 0.0
    # the mean of the differences is the difference of the means (same episodes)
    gap = results["fly"]["mean_return"] - results["rule"]["mean_return"]
    assert results["fly"]["paired_diff"] == pytest.approx(gap, abs=1e-6)
    table = markdown_table(results, paired_with="rule")
    assert "− rule, paired |" in table.splitlines()[0]
    assert f"| {results['fly']['paired_diff']:+,.0f} ± " in table and table.count(" – |") == 1
    with pytest.raises(ValueError, match="not one of the policies"):
        evaluate_policies({"fly": make_policy("do_nothing")}, num_envs=2, paired_with="rule")


def test_paired_with_several_references_keeps_each_difference_and_the_first_as_the_column():
    policies = {"fly": make_policy("do_nothing"), "rule": make_policy("time_based"), "belief": make_policy("belief")}
    # a short challenge-score stream: the paired differences are about the one-episode-each table
    results = evaluate_policies(
        policies, num_envs=16, seed=5, stream_envs=1, score_episodes=4, paired_with=("belief", "rule")
    )
    for r in results.values():
        assert set(r["paired"]) == {"belief", "rule"}
        assert r["paired_diff"] == r["paired"]["belief"]["paired_diff"]  # the first is the table's column
        for ref in ("belief", "rule"):
            gap = r["mean_return"] - results[ref]["mean_return"]
            assert r["paired"][ref]["paired_diff"] == pytest.approx(gap, abs=1e-6)
    assert results["rule"]["paired"]["rule"] == {"paired_diff": 0.0, "paired_ci95": 0.0}
    with pytest.raises(ValueError, match="'nobody' is not one of the policies"):
        evaluate_policies(policies, num_envs=2, paired_with=("belief", "nobody"))


def test_run_episodes_counts_only_first_k_per_env():
    env = make_env(num_envs=4, seed=1)
    eps = run_episodes(env, make_policy("random", env), episodes_per_env=3)
    assert len(eps) == 12
    # each env's episodes finish in increasing time
    assert (eps.finish_step.view(4, 3).diff(dim=1) > 0).all()


@pytest.mark.parametrize("step_size", [10, 7])
def test_record_episode_holds_every_flight_once_in_order(step_size):
    """Rows from the reset reading to the end, each flight once: read from `new_rows`, not by
    matching flight indices; every action at the flight it was taken."""
    from torch_student_env.evaluation import record_episode

    policy = make_policy("time_based")
    ep = record_episode(policy, seed=3, step_size=step_size)
    flights = ep["flight"].tolist()
    assert flights == list(range(len(flights)))  # 0 (reset), 1, 2, ... with no gap and no repeat
    assert ep["sensors"].shape == (len(flights), 7) and ep["health"].shape == (len(flights),)
    assert ep["action_flight"].tolist() == [step_size * k for k in range(len(ep["action"]))]
    with pytest.raises(ValueError, match="history >= step_size"):
        record_episode(policy, seed=3, step_size=10, history=5)


def test_belief_inputs_feed_a_players_estimate_to_the_head():
    _, td = _rollout_td(n=8, steps=3)
    with pytest.raises(ValueError, match="needs player_keys"):
        ActorCritic(belief_inputs=True)
    model = ActorCritic(player_keys=True, belief_inputs=True)
    assert model.trunk.head[0].in_features == ActorCritic(player_keys=True).trunk.head[0].in_features + 2
    worn = td.clone()  # the same counters, a younger repair: another wear-rate prior, so another estimate
    worn["since_repair"] = torch.where(worn["repairs"] > 0, worn["since_repair"] + 30, worn["since_repair"])
    assert model.get_value(td).shape == (8,) and torch.isfinite(model.get_value(worn)).all()


def _head_scalars(model: ActorCritic, td: TensorDict) -> torch.Tensor:
    """The scalars the model's trunk is given for `td` (captured at the trunk's call)."""
    seen = []
    handle = model.trunk.register_forward_pre_hook(lambda _module, args: seen.append(args[2]))
    try:
        model.get_value(td)
    finally:
        handle.remove()
    return seen[0]


def test_plan_inputs_are_the_belief_plans_action_one_hot():
    env = make_env(num_envs=64, seed=4)
    td, belief = env.reset(), make_policy("belief", env)
    for _ in range(12):  # past the first repairs, so the plan's actions differ between engines
        td = env.step(belief(td))
    with pytest.raises(ValueError, match="plan_inputs needs player_keys"):
        ActorCritic(plan_inputs=True)
    planned = belief(td)
    assert len(planned.unique()) > 1, "the test needs engines the plan treats differently"
    model = ActorCritic(player_keys=True, plan_inputs=True)
    scalars = _head_scalars(model, td)
    assert scalars.shape == (64, 3 + 3)  # age, since_repair, repairs, then the plan's one-hot
    assert torch.equal(scalars[:, 3:], torch.nn.functional.one_hot(planned, 3).float())
    # with both options: the estimate (health, 100 x rate) comes first, then the plan
    both = _head_scalars(ActorCritic(player_keys=True, belief_inputs=True, plan_inputs=True), td)
    health, rate = belief.estimate(td)
    assert torch.allclose(both[:, 3:5], torch.stack((health, 100 * rate), dim=-1))
    assert torch.equal(both[:, 5:], scalars[:, 3:])


def test_update_pass_scores_the_stored_and_the_teachers_actions():
    torch.manual_seed(0)
    model = ActorCritic(player_keys=True)
    _, td = _rollout_td(n=8, steps=3)
    stored = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    teacher = torch.tensor([1, 1, 0, 2, 2, 0, 0, 1])
    log_probs = torch.log_softmax(model.actor(model.features(td)), dim=-1)
    logp, entropy, value, teacher_logp = model(model.inputs(td), stored, teacher)
    assert torch.allclose(logp, log_probs[torch.arange(8), stored])
    assert torch.allclose(teacher_logp, log_probs[torch.arange(8), teacher])
    assert torch.allclose(entropy, -(log_probs.exp() * log_probs).sum(-1))
    assert torch.allclose(value, model.get_value(td))
    _, sampled_logp, _, _ = model.get_action_and_value(td, stored)  # the rollout's pass agrees
    assert torch.allclose(sampled_logp, logp)
    assert torch.equal(model(model.inputs(td), stored)[3], torch.zeros(8))  # no teacher: no kickstarting term


def test_cnn_rows_convolves_the_newest_rows_only():
    env = make_env(num_envs=8, seed=6, history=30)
    td = env.reset()
    for _ in range(4):
        td = env.step(torch.zeros(8, dtype=torch.long))
    torch.manual_seed(0)
    short = ActorCritic(player_keys=True, cnn_rows=10)
    whole = ActorCritic(player_keys=True)
    whole.load_state_dict(short.state_dict())
    newest = td.clone()
    newest["observation"], newest["valid"], newest["flight"] = (
        td["observation"][:, -10:],
        td["valid"][:, -10:],
        td["flight"][:, -10:],
    )
    assert torch.allclose(short.get_value(td), whole.get_value(newest))
    assert not torch.allclose(whole.get_value(td), whole.get_value(newest))  # the older rows do count there
    with pytest.raises(ValueError, match="cnn_rows must be >= 0"):
        ActorCritic(cnn_rows=-1)


def test_evaluator_plays_the_checkpoints_window_and_refuses_two(tmp_path, capsys):
    """Checkpoints record the window they trained with: the CLI plays every policy with it, or
    refuses checkpoints of different windows unless --history chooses."""
    from torch_student_env.evaluate import load_policy, main

    paths = []
    for history in (20, 30):
        model = ActorCritic(player_keys=True, plan_inputs=True, cnn_rows=10)
        config = {"player_keys": True, "plan_inputs": True, "cnn_rows": 10, "history": history, "hidden": 999}
        torch.save({"agent": model.state_dict(), "model": config, "global_step": 1}, tmp_path / f"h{history}.pt")
        paths.append(str(tmp_path / f"h{history}.pt"))
    name, policy, history = load_policy(paths[0], torch.device("cpu"), seed=0)
    assert history == 20 and policy.__self__.cnn_rows == 10 and policy.__self__.plan_inputs
    assert policy.__self__.trunk.head[0].out_features == 64  # an unknown key ("hidden") is not applied
    with pytest.raises(SystemExit):
        main(["--policy", paths[0], "--policy", paths[1], "--episodes", "4"])
    assert "trained with windows [20, 30]: choose one with --history" in capsys.readouterr().err
    main(["--policy", paths[0], "--policy", paths[1], "--episodes", "4", "--history", "40"])
    assert capsys.readouterr().out.startswith("4 episodes per policy, seed 10000, windows of 40 rows")


def test_stored_extra_inputs_are_read_instead_of_estimated_again():
    from torch_student_env.models import EXTRA_INPUTS_KEY

    env = make_env(num_envs=16, seed=4)
    td, belief = env.reset(), make_policy("belief", env)
    for _ in range(12):
        td = env.step(belief(td))
    model = ActorCritic(player_keys=True, belief_inputs=True, plan_inputs=True)
    assert ActorCritic(player_keys=True).extra_inputs(td) is None
    extra = model.extra_inputs(td)
    assert extra.shape == (16, 2 + 3)
    cached = td.clone().set(EXTRA_INPUTS_KEY, extra)
    assert torch.equal(model.get_value(cached), model.get_value(td))
    flat = torch.stack([cached, cached]).reshape(-1)  # a rollout's (T, N) storage, flattened as the update does
    assert torch.equal(model.get_value(flat)[16:], model.get_value(td))
    other = cached.clone().set(EXTRA_INPUTS_KEY, torch.zeros_like(extra))  # read, not recomputed
    assert not torch.equal(model.get_value(other), model.get_value(td))


def test_counter_flights_sets_the_unit_of_the_counters_and_old_configs_keep_the_flight_limit():
    from torch_student_env.models import window_inputs

    env = make_env(num_envs=8, seed=3)
    env.reset()
    td = env.step(torch.zeros(8, dtype=torch.long))
    _, _, per_limit = window_inputs(td, 1000, player_keys=True)
    _, _, per_hundred = window_inputs(td, 1000, player_keys=True, counter_flights=100)
    torch.testing.assert_close(per_limit[:, :2], td["age"].unsqueeze(1).float().expand(-1, 2) / 1000)
    torch.testing.assert_close(per_hundred[:, :2], per_limit[:, :2] * 10)
    torch.testing.assert_close(per_hundred[:, 2], per_limit[:, 2])  # repairs keep their scale
    old = {"max_flights": 1000, "player_keys": True, "cnn_rows": 10}  # a checkpoint from before the key
    assert ActorCritic.from_config(old).counter_flights == 0
    assert ActorCritic.from_config(old | {"counter_flights": 100}).config()["counter_flights"] == 100
    with pytest.raises(ValueError, match="counter_flights must be >= 0"):
        ActorCritic(counter_flights=-1)


def test_counter_bins_read_since_repair_in_steps_and_repairs_one_hot_with_an_open_last_class():
    from torch_student_env.models import counter_one_hot

    td = TensorDict(
        {"since_repair": torch.tensor([0, 9, 10, 75, 400]), "repairs": torch.tensor([0, 1, 2, 3, 9])}, batch_size=[5]
    )
    one_hot = counter_one_hot(td, step_size=10, bins=4)
    assert one_hot.shape == (5, 8)
    # since_repair // 10, the last class open: 0, 0, 1, 3 (7 steps), 3 (40 steps); repairs 0, 1, 2, 3, 3 (9)
    assert one_hot[:, :4].argmax(-1).tolist() == [0, 0, 1, 3, 3]
    assert one_hot[:, 4:].argmax(-1).tolist() == [0, 1, 2, 3, 3]
    assert (one_hot.sum(-1) == 2).all()
    model = ActorCritic(player_keys=True, counter_bins=4, cnn_rows=10)
    env = make_env(num_envs=3, seed=2)
    td = env.reset()
    assert model.get_value(td).shape == (3,)
    assert ActorCritic.from_config(model.config()).counter_bins == 4
    assert ActorCritic.from_config({"player_keys": True}).counter_bins == 0  # an older checkpoint's config
    with pytest.raises(ValueError, match="counter_bins must be >= 0 and needs player_keys, got 4"):
        ActorCritic(counter_bins=4)
    with pytest.raises(ValueError, match="got -1"):
        ActorCritic(player_keys=True, counter_bins=-1)


def test_the_learning_curve_zooms_on_belief_the_oracle_and_the_best_rule(tmp_path):
    np = pytest.importorskip("numpy")
    pytest.importorskip("matplotlib", reason="plots need the [examples] extra")
    from PIL import Image

    from torch_student_env.plotting import plot_learning_curve, zoom_band

    references = {"belief": 0.0, "oracle": 9.0, "time_based": -118.0, "threshold": -230.0, "do_nothing": -2850.0}
    diff = np.array([-2900.0, -140.0, -60.0, -30.0, -10.0])  # from random to near belief
    shown, (low, high) = zoom_band(references, diff)
    assert shown == {"belief": 0.0, "oracle": 9.0, "time_based": -118.0}  # the best rule only
    assert low < -118.0 and high > 9.0  # every line and the curve's best point are inside
    assert low > -2900.0 and low > -230.0  # the first point and the lower rules are not: they would squash it
    curve = [{"env_steps": 100 * i, "mean_return": 4744.0 + d, "ci95": 80.0, "paired_diff": d, "paired_ci95": 20.0}
             for i, d in enumerate(diff)]  # fmt: skip
    baselines = {"oracle": 4753.0, "belief": 4744.0, "time_based": 4626.0}
    two = plot_learning_curve(curve, baselines, tmp_path / "two.png", paired=references)
    one = plot_learning_curve([{k: c[k] for k in ("env_steps", "mean_return", "ci95")} for c in curve],
                              baselines, tmp_path / "one.png", paired=references)  # fmt: skip
    # an old run's curve has no paired points: one panel, as before
    assert Image.open(two).size[0] > 1.5 * Image.open(one).size[0]


def test_a_cnn_over_its_newest_rows_plays_the_same_on_any_longer_window():
    """The main job trains on 10-row windows and is validated and evaluated on 100-row ones
    (`ppo_cnn.eval_window`): with `cnn_rows` rows read and no belief inputs, the network's
    actions and values depend only on those rows and the counters, never on older rows."""
    torch.manual_seed(0)
    model = ActorCritic(player_keys=True, cnn_rows=10, counter_flights=100, counter_bins=16, channels=16)
    model.trunk.norm.update(torch.randn(64, 10, 9) * 3 + 5, torch.ones(64, 10, dtype=torch.bool))
    short, long = make_env(num_envs=32, seed=4, history=10), make_env(num_envs=32, seed=4, history=100)
    a, b = short.reset(), long.reset()
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        with torch.no_grad():
            _, _, _, value_a = model.get_action_and_value(a, torch.zeros(32, dtype=torch.long))
            _, _, _, value_b = model.get_action_and_value(b, torch.zeros(32, dtype=torch.long))
        assert torch.equal(model.act(a), model.act(b)) and torch.allclose(value_a, value_b, atol=1e-6)
        actions = torch.multinomial(torch.tensor([0.85, 0.1, 0.05]), 32, replacement=True, generator=gen)
        a, b = short.step(actions), long.step(actions)
    assert bool(b["valid"][:, :-10].any())  # the long window did hold older rows the network ignored

"""The fidelity tool: reading logs, replaying them, and the targets on the real server's episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torch_student_env.fidelity import load_episodes, replay, schedule, step_contexts
from torch_student_env.fidelity.__main__ import main
from torch_student_env.fidelity.compare import ks_distance
from torch_student_env.fidelity.replay import continuations

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_server"


def _record(**overrides) -> str:
    record = {
        "actions": [0, 1, 2],
        "rewards": [450.0, -520.0, 150.0],
        "steps": [10, 20, 21],
        "obs": [[1.0] * 9] * 3,
        "cause": "sold",
    }
    return json.dumps(record | overrides)


def test_load_episodes_reads_records_and_names_the_bad_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(_record() + "\n\n" + _record(cause="failure", rewards=[450.0, -520.0, -1000.0]) + "\n")
    episodes = load_episodes(good)
    assert len(episodes) == 2 and episodes[0].total == 80.0 and not episodes[0].failed
    assert episodes[1].failure_flight() == 21 and episodes[0].failure_flight() is None
    for bad, message in [
        (_record(actions=[0, 3, 2]), "actions must be in"),
        (_record(obs=[[1.0] * 8] * 3), "9 values"),
        (_record(rewards=[1.0]), "one length"),
        (_record(cause="crash"), "cause must be"),
        ("{not json", "not an episode record"),
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(_record() + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
            load_episodes(path)


def test_first_flight_failure_is_the_flight_after_the_previous_step(tmp_path):
    """Both clients' logs of the server's error on a step's first flight: the vectorised one logs
    a counter of 0, the single-engine one an unchanged counter and `server_error_at_end` (and
    repeats its last row)."""
    two = {"actions": [0, 0], "rewards": [450.0, 0.0], "obs": [[1.0] * 9] * 2, "cause": "failure"}
    rows = [[[1.0] * 9] * 10, [[1.0] * 9]]
    path = tmp_path / "first.jsonl"
    path.write_text(
        json.dumps(two | {"steps": [10, 0]})
        + "\n"
        + json.dumps(two | {"steps": [10, 10], "server_error_at_end": True, "rows": rows, "agent_name": "DoNothing"})
        + "\n"
        + json.dumps(two | {"steps": [10, 14], "rows": [rows[0], [[1.0] * 9] * 3]})
        + "\n"
    )
    vectorised, single, ordinary = load_episodes(path)
    assert vectorised.first_flight_failure and vectorised.failure_flight() == 11
    assert single.first_flight_failure and single.failure_flight() == 11 and single.rows_per_step == (10, 0)
    assert not ordinary.first_flight_failure and ordinary.failure_flight() == 14 and ordinary.rows_per_step == (10, 3)
    assert (vectorised.agent, single.agent) == ("first", "DoNothing")  # the file's name, else agent_name


def test_step_contexts_and_schedules():
    contexts = step_contexts([0, 0, 1, 0, 2])
    assert [c.since_repair for c in contexts] == [0, 1, 2, 0, 1]
    assert [c.repairs_before for c in contexts] == [0, 0, 0, 1, 1]
    assert [c.age for c in contexts] == [0, 10, 20, 30, 40] and contexts[-1].terminal
    assert schedule(repair_every=50, sell_at=250) == (0,) * 5 + ((1,) + (0,) * 4) * 4 + (2,)


def test_continuations_extend_a_log_by_the_agents_longest_matching_episode():
    lists = [(0, 0, 1), (0, 0, 1, 0, 0), (0, 2), (1,)]
    assert continuations(lists) == [(0, 0, 1, 0, 0), (0, 0, 1, 0, 0), (0, 2), (1, 0, 0, 0, 0)]  # flown to the longest


def test_continuations_keep_to_the_policys_repair_period_past_the_log():
    """A periodic agent's failed episode is continued past its longest match by repairing every
    k steps after its last repair (k: the episode's last gap); a sold one is left as it is."""
    lists = [(0, 0, 1, 0, 0, 1, 0), (0, 0, 1, 0, 0, 1, 0, 0), (0, 2), (0, 0, 0, 1, 0, 2)]
    out = continuations(lists, extra_steps=4)
    assert out[0] == out[1] == (0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1)  # 8 + 4 steps, a repair every 3
    assert out[2] == (0, 2) and out[3] == (0, 0, 0, 1, 0, 2)
    # one repair only: the policy's most common gap (3, from the other episodes) continues it
    assert continuations([(0, 1, 0), (1, 0, 0, 1)], extra_steps=3)[0] == (0, 1, 0, 0, 1, 0, 0)
    # a policy that never repairs twice keeps flying
    assert continuations([(0, 0), (0,)], extra_steps=2) == [(0, 0, 0, 0), (0, 0, 0, 0)]


def test_failure_timing_test_accepts_the_same_law_and_rejects_a_shifted_one():
    from torch_student_env.fidelity.compare import failure_timing_test

    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(400, generator=gen) * 15 + 280).long().tolist()
    same = (torch.randn(3200, generator=gen) * 15 + 280).long().tolist()
    shifted = (torch.randn(3200, generator=gen) * 15 + 265).long().tolist()
    p_same, dof = failure_timing_test(real, 450, same, 3600)  # 50 and 400 episodes sold
    assert p_same > 0.01 and dof >= 5  # 10-flight bins merged to 5 expected, plus the sold
    p_shifted, _ = failure_timing_test(real, 450, shifted, 3600)
    assert p_shifted < 1e-6
    # the same failures but twice as many sold engines in the simulation: rejected too
    p_more_sold, _ = failure_timing_test(real, 450, same, 6800)
    assert p_more_sold < 1e-6
    assert failure_timing_test([], 10, [], 80)[1] == 0  # nothing to compare


def test_ks_distance():
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([1, 2], [5, 6]) == 1.0
    assert ks_distance([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5


def test_replay_follows_the_actions_then_flies_until_failure():
    runs = replay([(0, 0, 2), (0,)], seeds=3, seed=1)
    for run in runs[0]:  # a sale at step 3, unless the engine failed first (it is fresh: it won't)
        assert run.actions == (0, 0, 2) and run.rewards[-1] == 150.0 and run.flights == (10, 20, 21)
    for run in runs[1]:  # keeps flying after its one action, until it fails
        assert run.failed and len(run.actions) > 5 and set(run.actions) == {0}
    assert len({run.rewards for run in runs[1]}) == 3  # three different engines


LOGS = ("exploration_episodes.jsonl", "do_nothing_episodes.jsonl", "repair_or_sell_episodes.jsonl")


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real episodes are in ../shared/data/real_server (not shipped)")
def test_fidelity_targets_met_on_every_policys_real_episodes(tmp_path):
    """Every target of every policy, on seeds other than the documented run's. Two figures sit at
    their edge (docs/simulator.md, "Fidelity"): the exploring agent's 58 steps 4 after a 5th
    repair (-3 real, -10 to -14 simulated by seed; must stay within 20 of it) and its failures by
    engine age (chi-square p 0.006-0.036 by seed against the target's 0.01; must stay above
    0.001: the model still fails a few engines at the end of the segments after the repairs at
    120 and 180 flights, where the server failed none)."""
    table = tmp_path / "fidelity.md"
    main([*(str(REAL_DATA / log) for log in LOGS), "--seeds", "4", "--seed", "1", "--markdown", str(table)])
    text = table.read_text()
    edges = {
        "| fly reward by bin | 5 repairs, step 4 after (n=58) |": lambda real, sim: abs(sim - real) < 20,
        "| failure timing (chi-square) | by engine age: p (": lambda real, sim: sim > 0.001,
    }
    missed = [line for line in text.splitlines() if "**no**" in line or "outside" in line]
    for line in missed:
        edge = next((e for e in edges if line.startswith(e)), None)
        assert edge is not None, line
        real, sim = (float(cell.replace(",", "") or "nan") for cell in line.split("|")[3:5])
        assert edges[edge](real, sim), line
    for policy in ("ExplorationAgent", "DoNothing", "RandomRepairOrSell"):
        assert f"### {policy}:" in text
    assert "never-repaired life" in text and "failing step" in text and "per-call mean reward" in text
    assert text.count("| failure timing (chi-square) |") == 4  # by age and since repair, for both failure logs
    assert "within" in text


def _close(a, b, path="") -> None:
    """Nested JSON-like values equal, floats to a relative 1e-9 (another BLAS sums in another order)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_close_compares_floats_with_a_tolerance_and_the_rest_exactly():
    _close({"a": [1.0, 2, None]}, {"a": [1.0 + 1e-13, 2, None]})
    for other in ({"a": [1.1, 2, None]}, {"a": [1.0, 3, None]}, {"b": [1.0, 2, None]}):
        with pytest.raises(AssertionError):
            _close({"a": [1.0, 2, None]}, other)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real episodes are in ../shared/data/real_server (not shipped)")
def test_shipped_targets_are_the_real_episodes_summary():
    from importlib.resources import files

    from torch_student_env.fidelity import summarize
    from torch_student_env.fidelity.__main__ import by_policy

    shipped = json.loads(files("torch_student_env.fidelity").joinpath("targets.json").read_text())
    episodes = [ep for log in LOGS for ep in load_episodes(REAL_DATA / log)]
    real = {name: summarize(group) for name, group in by_policy(episodes).items()}
    _close(shipped, json.loads(json.dumps(real)))

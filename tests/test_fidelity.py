"""The fidelity tool: reading logs, replaying them, and the targets on the real server's episodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_first_flight_failure_is_the_flight_after_the_previous_step():
    from torch_student_env.fidelity.data import LoggedEpisode

    ep = LoggedEpisode(actions=(0, 0), rewards=(450.0, 0.0), flights=(10, 0), rows=((0.0,) * 9,) * 2, failed=True)
    assert ep.failure_flight() == 11


def test_step_contexts_and_schedules():
    contexts = step_contexts([0, 0, 1, 0, 2])
    assert [c.since_repair for c in contexts] == [0, 1, 2, 0, 1]
    assert [c.repairs_before for c in contexts] == [0, 0, 0, 1, 1]
    assert [c.age for c in contexts] == [0, 10, 20, 30, 40] and contexts[-1].terminal
    assert schedule(repair_every=50, sell_at=250) == (0,) * 5 + ((1,) + (0,) * 4) * 4 + (2,)


def test_continuations_extend_a_log_by_the_agents_longest_matching_episode():
    lists = [(0, 0, 1), (0, 0, 1, 0, 0), (0, 2), (1,)]
    assert continuations(lists) == [(0, 0, 1, 0, 0), (0, 0, 1, 0, 0), (0, 2), (1,)]


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


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real episodes are in ../shared/data/real_server (not shipped)")
def test_fidelity_targets_met_on_the_real_servers_episodes(tmp_path, capsys):
    table = tmp_path / "fidelity.md"
    code = main([str(REAL_DATA / "exploration_episodes.jsonl"), "--seeds", "4", "--markdown", str(table)])
    text = table.read_text()
    assert code == 0, [line for line in text.splitlines() if "**no**" in line or "outside" in line]
    assert "0 missed" in text and "within" in text


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real episodes are in ../shared/data/real_server (not shipped)")
def test_shipped_targets_are_the_real_episodes_summary():
    from importlib.resources import files

    from torch_student_env.fidelity import summarize

    shipped = json.loads(files("torch_student_env.fidelity").joinpath("targets.json").read_text())
    real = summarize(load_episodes(REAL_DATA / "exploration_episodes.jsonl"))
    assert shipped == json.loads(json.dumps(real))

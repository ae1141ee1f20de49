"""scripts/soak.py: many clients against one server, every step checked against a local twin."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="remote tests need the [server] extra")
pytest.importorskip("uvicorn", reason="remote tests need the [server] extra")


@pytest.mark.slow  # soak
def test_soak_script_checks_every_step_against_a_twin(tmp_path):
    """scripts/soak.py end to end, shortly: steps happen, and none is lost or differs."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    out = tmp_path / "soak.json"
    command = [sys.executable, str(script), "--clients", "2", "--seconds", "1.5", "--envs", "3", "--step-size", "5"]
    run = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["steps"] > 0 and figures["mismatches"] == 0 and figures["lost_steps"] == 0
    assert figures["errors"] == [] and figures["clients"] == 2
    latency = figures["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


@pytest.mark.slow  # soak
def test_soak_fill_token_reaches_the_engine_limit_and_is_refused_past_it():
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    run = subprocess.run([sys.executable, str(script), "--fill-token"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout)
    from torch_student_env.server import Limits

    assert figures["engines_held"] == Limits().max_envs_per_token
    assert (
        figures["refused"].startswith("409: this token would hold") and figures["largest_request_holds_its_group_s"] > 0
    )


@pytest.mark.slow  # kills and restarts a server
def test_kill_9_mid_load_loses_no_acknowledged_episode(tmp_path):
    """scripts/soak.py --kill: three clients, the server killed with SIGKILL mid-load and restarted
    on the same file. Every episode a client saw finish is stored and served, the file
    is sound, and every client got a named error (not a hang)."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    out, db = tmp_path / "kill.json", tmp_path / "scores.sqlite"
    command = [sys.executable, str(script), "--kill", "--clients", "3", "--seconds", "2", "--rounds", "1"]
    command += ["--timeout", "5", "--db", str(db), "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["episodes_acknowledged"] > 0 and figures["acknowledged_but_missing"] == 0
    assert figures["episodes_found"] >= figures["episodes_acknowledged"]
    assert figures["episodes_served_by_the_score_endpoint"] == figures["episodes_found"]
    assert figures["integrity_check"] == "ok" and figures["client_outcomes"] == {"ServerUnavailable": 3}


@pytest.mark.slow  # a front of two workers, one killed mid-load
def test_kill_9_of_one_worker_mid_load_loses_nothing_and_the_others_never_notice(tmp_path):
    """scripts/soak.py --kill --workers 2: worker 0 is killed mid-load. Its clients get a named
    error, the other worker's clients step on to the end, and every episode acknowledged by either
    worker is stored and served."""
    import json
    import subprocess
    import sys

    from torch_student_env.server.front import FrontError, find_nginx

    try:
        find_nginx()
    except FrontError as err:
        pytest.skip(str(err))
    script = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"
    out, db = tmp_path / "kill.json", tmp_path / "scores.sqlite"
    command = [sys.executable, str(script), "--kill", "--workers", "2", "--clients", "6", "--seconds", "2"]
    command += ["--rounds", "1", "--timeout", "5", "--db", str(db), "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["episodes_acknowledged"] > 0 and figures["acknowledged_but_missing"] == 0
    assert figures["episodes_served_by_the_score_endpoint"] == figures["episodes_found"]
    outcomes = figures["client_outcomes"]
    assert figures["integrity_check"] == "ok" and sum(outcomes.values()) == 6
    # the clients are spread over the workers: the killed worker's three got a named error, and the
    # other three were stopped by the script, never an error
    killed = figures["outcomes_on_the_killed_worker"]
    assert sum(killed.values()) == 3 and set(killed) <= {"ServerUnavailable", "NotFoundError"}
    assert outcomes == {"stopped": 3, **killed}

"""scripts/load.py, the load generator of the class server: it drives a server it starts, and
reports what a class sees (no speed asserted here: docs/reliability.md has the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="server tests need the [server] extra")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "load.py"


@pytest.mark.slow  # a server process and two generator processes for a few seconds
def test_the_load_generator_replays_the_seed_clients_sequence_without_errors(tmp_path):
    out = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--clients", "3", "--seconds", "2", "--warmup", "1", "--json", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["first_errors"] == []
    assert report["vector_steps_per_s"] > 0 and 0 < report["p50_ms"] <= report["p99_ms"]
    # the server's CPU is read from /proc for its whole process tree, and so is the generator's
    assert report["server_processes"] >= 1 and report["server_cpu_ms_per_step"] > 0
    assert set(report["server_cpu_ms_per_step_by_role"]) <= {"server", "build"}
    assert report["generator_cpu_ms_per_step"] > 0 and report["engines_per_client"] == 4


def test_a_bad_client_count_is_refused():
    run = subprocess.run([sys.executable, str(SCRIPT), "--clients", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--clients must be >= 1, got 0" in run.stderr

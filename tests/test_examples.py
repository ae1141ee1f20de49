"""Examples as subprocesses with tiny budgets: they finish, write what they promise, resume."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib", reason="examples need the [examples] extra (matplotlib)")
pytest.importorskip("tqdm", reason="examples need the [examples] extra (tqdm)")


def _run(script: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _check_outputs(out: Path, name: str) -> dict:
    for f in ("eval.md", "eval.json", "learning_curve.png", "episode.png", "checkpoint.pt"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "eval.json").read_text())
    results = report["results"]
    assert set(results) == {name, "random", "do_nothing", "time_based", "threshold", "oracle"}
    for r in results.values():
        assert all(math.isfinite(v) for v in r.values())
    assert all(math.isfinite(c["mean_return"]) for c in report["curve"]) and report["curve"]
    assert f"| {name} |" in (out / "eval.md").read_text()
    return report


def tiny_ppo(total_steps: int) -> list[str]:
    """PPO flags for a few updates of 8 envs x 16 steps (128 env steps per update)."""
    return [
        "--no-fast",  # eager: a smoke test should not pay the one-off compile
        "--num-envs",
        "8",
        "--num-steps",
        "16",
        "--total-steps",
        str(total_steps),
        "--eval-every",
        "2",
        "--checkpoint-every",
        "1",
        "--eval-envs",
        "8",
        "--final-eval-envs",
        "16",
    ]


def test_quickstart_runs():
    out = _run("examples/quickstart.py")
    assert "step 40" in out and "HPC_Tout" in out


def test_ppo_cnn_smoke_and_resume(tmp_path):
    out = tmp_path / "ppo"
    _run("examples/ppo_cnn.py", *tiny_ppo(384), "--out", str(out))
    report = _check_outputs(out, "ppo_cnn")
    assert report["env_steps"] == 384  # 3 updates of 8 envs x 16 steps
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 3 and ckpt["global_step"] == 384
    # resume with a larger budget: continues from the saved step count, not from zero
    stdout = _run("examples/ppo_cnn.py", *tiny_ppo(640), "--resume", "--out", str(out))
    assert "resumed from" in stdout and "at update 3, 384 env steps" in stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 5 and ckpt["global_step"] == 640


def test_dqn_cnn_smoke(tmp_path):
    out = tmp_path / "dqn"
    _run(
        "examples/dqn_cnn.py",
        "--num-envs",
        "8",
        "--total-steps",
        "400",
        "--learning-starts",
        "100",
        "--batch-size",
        "32",
        "--eval-every",
        "200",
        "--eval-envs",
        "8",
        "--device",
        "cpu:0",  # normalised to cpu: the flag takes any torch device name
        "--final-eval-envs",
        "16",
        "--out",
        str(out),
    )
    _check_outputs(out, "dqn_cnn")


def test_evaluate_script_on_checkpoint_and_baselines(tmp_path):
    out = tmp_path / "ppo"
    _run("examples/ppo_cnn.py", *tiny_ppo(384), "--out", str(out))
    table = tmp_path / "table.md"
    stdout = _run(
        "scripts/evaluate.py",
        "--policy",
        str(out / "checkpoint.pt"),
        "--policy",
        "time_based",
        "--episodes",
        "32",
        "--out",
        str(table),
    )
    text = table.read_text()
    assert "time_based" in text and "ppo (384 steps)" in text and text.strip() in stdout


def test_torchrl_ppo_smoke(tmp_path):
    pytest.importorskip("torchrl", reason="examples/torchrl_ppo.py needs the [torchrl] extra")
    out = tmp_path / "trl"
    _run(
        "examples/torchrl_ppo.py",
        "--num-envs",
        "8",
        "--frames-per-env",
        "16",
        "--total-steps",
        "256",
        "--eval-every",
        "1",
        "--device",
        "cpu:0",
        "--final-eval-envs",
        "16",
        "--out",
        str(out),
    )
    report = _check_outputs(out, "torchrl_ppo")
    assert report["env_steps"] == 256

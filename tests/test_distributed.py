"""`torchrun --nproc-per-node 2 examples/ppo_cnn.py --distributed` on CPU (gloo): identical ranks,
shards that together equal one env of twice the engines, and --resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torch_student_env import make_env

pytestmark = pytest.mark.slow  # end to end: two torchrun ranks

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--distributed", "--no-fast", "--num-envs", "8", "--num-steps", "16", "--num-minibatches", "8"]
FLAGS += ["--eval-every", "2"]
FLAGS += ["--checkpoint-every", "2", "--eval-envs", "16", "--final-eval-envs", "16", "--seed", "5"]
FLAGS += ["--no-variant-eval"]  # the plausible models are evaluated once, in test_examples
FLAGS += ["--score-episodes", "8"]  # a short stream for the challenge score: the rest is the test


def _torchrun(*args: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    try:
        result = subprocess.run(
            [*command, str(ROOT / "examples" / "ppo_cnn.py"), *FLAGS, *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as err:  # show where the ranks were
        pytest.fail(f"torchrun timed out:\n{(err.stdout or b'')[-2000:]!r}\n{(err.stderr or b'')[-4000:]!r}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_gloo_ranks_train_one_sharded_env_and_resume(tmp_path):
    out = _torchrun("--total-steps", "512", "--out", str(tmp_path))  # 2 updates of 2 ranks x 8 envs x 16 steps
    assert "ranks' parameters and statistics identical: True (2 ranks" in out
    assert "trained 512 env steps" in out and (tmp_path / "eval.md").is_file()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 2 and len(ckpt["envs"]) == 2 and ckpt["envs"][1]["num_envs"] == 8

    # the ranks' first rollouts, side by side, are one 16-engine env's rollout under the same actions
    rollout = torch.load(tmp_path / "first_rollout.pt", weights_only=True)
    assert rollout["observation"].shape == (16, 16, 10, 9)  # the main job's training window: 10 rows
    env = make_env(num_envs=16, seed=5, history=10)
    td = env.reset()
    for t in range(16):
        assert torch.equal(td["observation"], rollout["observation"][t]), t
        td = env.step(rollout["action"][t])
        assert torch.equal(td["reward"], rollout["reward"][t]), t

    out = _torchrun("--total-steps", "1024", "--resume", "--out", str(tmp_path))
    assert "resumed from" in out and "at update 2, 512 env steps" in out and "identical: True" in out
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["update"] == 4

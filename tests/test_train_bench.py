"""scripts/train_bench.py: the parts of a PPO update it times, and the time-to-belief read from a run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_bench():
    spec = importlib.util.spec_from_file_location("train_bench", ROOT / "scripts" / "train_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_time_to_belief_is_the_first_validation_point_within_the_margin(train_bench, tmp_path):
    curve = [{"env_steps": 100, "paired_diff": -90.0}, {"env_steps": 300, "paired_diff": -25.0},
             {"env_steps": 400, "paired_diff": -40.0}]  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps({"curve": curve, "env_steps": 1000, "train_seconds": 20.0}))
    assert train_bench.time_to_belief(tmp_path) == {"env_steps": 300, "train_seconds": 6.0}
    assert train_bench.time_to_belief(tmp_path, margin=10.0) is None


def test_the_parts_of_an_update_add_up(train_bench):
    """Collection and update are each slower than the whole loop is fast: end to end is their
    harmonic sum, and the env's share of it is a share."""
    figures = train_bench.measure(1, {"num_envs": 4, "num_steps": 8, "num_minibatches": 4, "fast": False})
    collect, update, whole = (figures[k] for k in ("collection (env + policy)", "update (advantages + PPO epochs)",
                                                    "end to end"))  # fmt: skip
    assert whole == pytest.approx(1 / (1 / collect + 1 / update), rel=1e-9)
    assert figures["env alone"] > 0 and 0 < figures["env share of end to end"] < 1
    assert figures["step kind"] == "eager" and figures["settings"]["num_envs"] == 4

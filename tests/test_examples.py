"""Examples as subprocesses with tiny budgets: they finish, write what they promise, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # end to end: each example runs as a subprocess

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("matplotlib", reason="examples need the [examples] extra (matplotlib)")
pytest.importorskip("tqdm", reason="examples need the [examples] extra (tqdm)")


def _run(script: str, *args: str, timeout: int = 300) -> str:
    command = ["-m", script.removeprefix("-m ")] if script.startswith("-m ") else [str(ROOT / script)]
    proc = subprocess.run([sys.executable, *command, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _check_outputs(out: Path, name: str, logged: bool = True) -> dict:
    """The run folder's files; `logged`: a CleanRL-style run (TensorBoard events, best checkpoint)."""
    files = ["eval.md", "eval.json", "learning_curve.png", "episode.png", "checkpoint.pt"]
    for f in files + (["best.pt"] if logged else []):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "eval.json").read_text())
    results = report["results"]
    baselines = {"random", "do_nothing", "time_based", "threshold", "belief", "oracle"}
    for r in results.values():
        assert all(math.isfinite(v) for v in r.values() if not isinstance(v, dict))
        assert {"belief", "time_based", "threshold"} <= set(r["paired"])  # the verdict's references
    if report["variants"]:  # every policy on every plausible model, and the worst of each in the table
        from torch_student_env.sim.variants import PLAUSIBLE

        assert set(report["variants"]) == set(results)
        assert all(set(per) == set(PLAUSIBLE) for per in report["variants"].values())
        assert "worst plausible model" in (out / "eval.md").read_text()
    assert all(math.isfinite(c["mean_return"]) for c in report["curve"]) and report["curve"]
    if not logged:
        assert set(results) == {name} | baselines and f"| {name} |" in (out / "eval.md").read_text()
        return report
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard event file"
    best = report["best"]
    assert abs(best["mean_return"] - max(c["mean_return"] for c in report["curve"])) <= 0.05  # curve: 1 decimal
    learned = {f"{name} (best: {best['env_steps']:,} steps)", f"{name} (final)"}
    assert set(results) == learned | baselines
    assert f"| {name} (best: " in (out / "eval.md").read_text()
    return report


def tiny_ppo(total_steps: int, variants: bool = False) -> list[str]:
    """PPO flags for a few updates of 8 envs x 16 steps (128 env steps per update, 8 minibatches);
    the plausible models' evaluation only when asked (`variants`: it is most of a tiny run's time)."""
    return [
        "--variant-eval" if variants else "--no-variant-eval",
        "--no-fast",  # eager: a smoke test should not pay the one-off compile
        "--num-envs",
        "8",
        "--num-steps",
        "16",
        "--num-minibatches",
        "8",
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
        "--score-episodes",  # the challenge score's stream: most of a tiny run's final report
        "8",
    ]


def test_quickstart_runs():
    out = _run("examples/quickstart.py")
    assert "step 40" in out and "HPC_Tout" in out


def test_the_quickstart_notebook_runs_and_draws_its_curve(tmp_path, monkeypatch):
    """examples/quickstart.ipynb, executed as a student would open it (nbclient, a fresh kernel in
    examples/): the client's loop, the batched env, a short PPO run and its plot."""
    nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient ([test] extra)")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("QUICKSTART_SMOKE", "1")  # 2 updates of 32 envs x 32 steps, a small report
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path / "run"))
    notebook = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "step 20: actions" in text and "episodes finished, mean return" in text
    assert "best validation return" in text and (tmp_path / "run" / "eval.md").is_file()
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the learning curve, drawn


def test_ppo_cnn_smoke_and_resume(tmp_path):
    out = tmp_path / "ppo"
    _run("examples/ppo_cnn.py", *tiny_ppo(384, variants=True), "--final-eval-envs", "8", "--out", str(out))
    report = _check_outputs(out, "ppo_cnn")
    assert report["variants"] and report["env_steps"] == 384  # 3 updates of 8 envs x 16 steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("approx_kl", "clipfrac", "entropy", "explained_variance", "value_loss", "policy_loss"):
        assert f"losses/{tag}" in tags, tag
    assert {"charts/SPS", "charts/validation_return", "charts/episodic_return"} <= tags
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 3 and ckpt["global_step"] == 384
    # resume with a larger budget: continues from the saved step count, not from zero
    stdout = _run("examples/ppo_cnn.py", *tiny_ppo(640), "--resume", "--out", str(out))
    assert "resumed from" in stdout and "at update 3, 384 env steps" in stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["update"] == 5 and ckpt["global_step"] == 640


def _ppo_module(monkeypatch):
    """examples/ppo_cnn.py as a module, its helpers importable beside it as when run as a script."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("ppo_cnn_example", ROOT / "examples" / "ppo_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_ppo_cnn_trains_on_the_rows_it_reads_and_evaluates_on_the_baselines_window(monkeypatch):
    """`eval_window`: validation, the table and the checkpoint use --eval-history rows when the
    network reads only the newest --cnn-rows of its training window, else the training window."""
    ppo = _ppo_module(monkeypatch)
    args = ppo.with_recipe(ppo.Args())
    assert (args.history, args.cnn_rows, ppo.eval_window(args)) == (10, 10, 100)
    for changed in ({"cnn_rows": 0}, {"cnn_rows": 20}, {"plan_inputs": True}, {"belief_inputs": True}):
        assert ppo.eval_window(dataclasses.replace(args, **changed)) == 10, changed
    residual = ppo.with_recipe(ppo.Args(recipe="residual"))
    assert residual.history == 100 and ppo.eval_window(residual) == 100 and residual.cnn_channels == 32


def _result(mean: float, ci: float, **paired: tuple[float, float]) -> dict:
    """A row of `evaluate_policies`' results: mean ± CI, and paired (difference, CI) by reference."""
    differences = {k: {"paired_diff": d, "paired_ci95": c} for k, (d, c) in paired.items()}
    return {"mean_return": mean, "ci95": ci, "paired": differences}


def test_the_verdict_judges_the_best_rule_by_the_paired_ci_and_reports_belief(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from report import verdict

    results = {
        "oracle": _result(4745, 41),
        "time_based": _result(4658, 38),
        "threshold": _result(4519, 51),
        "belief": _result(4740, 41),
    }
    # CIs overlap (4,731 - 41 < 4,658 + 38) but the paired CI is above 0: it beats the rule
    results["me"] = _result(4731, 41, time_based=(73.0, 30.0), belief=(-9.0, 16.0))
    line = verdict("me", results)
    assert line.startswith("me beats the best rule, time_based (4,731 vs 4,658: 84 % of the gap")
    assert "paired: +73 ± 30" in line and line.endswith("against belief, paired: -9 ± 16.")
    results["me"] = _result(4680, 41, time_based=(22.0, 30.0), belief=(-60.0, 16.0))
    assert verdict("me", results).startswith("me is within the CIs of the best rule, time_based")
    results["me"] = _result(4600, 41, time_based=(-58.0, 30.0), belief=(-140.0, 16.0))
    assert verdict("me", results).startswith("me is below the best rule")
    # without paired results: the two CIs apart
    results["me"] = {"mean_return": 4760.0, "ci95": 20.0}
    assert verdict("me", results).startswith("me beats the best rule") and "belief" not in verdict("me", results)


def test_a_recipe_sets_its_flags_where_they_are_left_at_their_defaults(monkeypatch):
    module = _ppo_module(monkeypatch)
    default = module.with_recipe(module.Args())
    # scratch: the window and the counters (numbers and one-hot), undiscounted, no plan, no teacher
    assert not default.plan_inputs and default.teacher == "" and default.player_keys and default.gamma == 1.0
    assert default.counter_flights == 100 and default.counter_bins == 16
    residual = module.with_recipe(module.Args(recipe="residual"))
    assert residual.plan_inputs and residual.teacher == "belief" and residual.gamma == 0.99  # the plan and its teacher
    assert residual.counter_flights == 0 and residual.counter_bins == 0
    assert default.total_steps == 5_400_000 and residual.total_steps == 3_600_000
    # both learn from minibatches of 512 samples: the default from rollouts of 128 engines x 64
    # steps, the residual recipe from the 64 x 64 it was measured with
    assert (default.num_envs, default.num_steps, default.num_minibatches) == (128, 64, 16)
    assert (residual.num_envs, residual.num_steps, residual.num_minibatches) == (64, 64, 8)
    assert module.with_recipe(module.Args(recipe="residual", teacher="threshold")).teacher == "threshold"
    with pytest.raises(SystemExit, match="--recipe must be one of \\['scratch', 'residual'\\], got 'best'"):
        module.with_recipe(module.Args(recipe="best"))


def test_ppo_main_returns_its_results_for_sweeps(tmp_path, monkeypatch):
    """`main()` hands a sweep tool the scores: best and final validation returns, the held-out table."""
    module = _ppo_module(monkeypatch)
    flags = tiny_ppo(256) + ["--out", str(tmp_path / "sweep")]
    result = module.main(module.parse_args(module.Args, "", flags))
    assert result["run_dir"] == str(tmp_path / "sweep") and result["best_env_steps"] in (128, 256)
    assert result["best_validation_return"] >= result["final_validation_return"]
    assert "time_based" in result["held_out"] and "score_total" in result["held_out"]["time_based"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--teacher", "oracle"], "reads the hidden state"),
        (["--teacher", "expert"], "unknown policy 'expert'"),
        (["--no-player-keys"], "--counter-bins reads the player-side counters"),
        (["--recipe", "residual", "--no-player-keys"], "--plan-inputs reads the player-side counters"),
        (["--num-minibatches", "129"], "--num-minibatches must be in [1, 128] (--num-envs x --num-steps"),
    ],
)
def test_ppo_refuses_inputs_a_player_cannot_have(tmp_path, flags, message):
    command = [sys.executable, str(ROOT / "examples/ppo_cnn.py"), *tiny_ppo(128), *flags]
    proc = subprocess.run(command + ["--out", str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "t").exists()  # refused before the run folder is made


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
        "--score-episodes",
        "8",
        "--out",
        str(out),
    )
    _check_outputs(out, "dqn_cnn")


def test_evaluate_script_on_checkpoint_and_baselines(tmp_path):
    """A checkpoint of the plan-input model with kickstarting and a longer window scores through
    the evaluator, which rebuilds the model and the window from the checkpoint's `model` config."""
    out = tmp_path / "ppo"
    flags = ["--recipe", "residual", "--kickstart-fraction", "1", "--history", "20"]  # plan input, belief teacher
    _run("examples/ppo_cnn.py", *tiny_ppo(384), *flags, "--out", str(out))
    assert "every policy with a window of 20 rows" in (out / "eval.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    # the kickstarting weight anneals linearly from 1 to 0 over the 3 updates: 1, 2/3, 1/3
    coefs = [(e.step, e.value) for e in events.Scalars("charts/kickstart_coef")]
    assert [s for s, _ in coefs] == [128, 256, 384]
    assert [v for _, v in coefs] == pytest.approx([1.0, 2 / 3, 1 / 3], abs=1e-6)
    assert len(events.Scalars("losses/kickstart")) == 3
    assert torch.load(out / "checkpoint.pt", weights_only=True)["model"]["plan_inputs"] is True
    table = tmp_path / "table.md"
    stdout = _run(
        "-m torch_student_env.evaluate",
        "--policy",
        str(out / "checkpoint.pt"),
        "--policy",
        "time_based",
        "--episodes",
        "32",
        "--score-episodes",
        "8",
        "--out",
        str(table),
    )
    text = table.read_text()
    assert "time_based" in text and "ppo (384 steps)" in text and text.strip() in stdout
    assert text.startswith("32 episodes per policy, seed 10000, windows of 20 rows")
    assert "challenge score: last 8 (mean)" in text


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
        "--score-episodes",
        "8",
        "--out",
        str(out),
    )
    report = _check_outputs(out, "torchrl_ppo", logged=False)
    assert report["env_steps"] == 256


def test_sb3_ppo_smoke_and_its_saved_policy_plays_the_same(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3", reason="the SB3 recipe needs the [sb3] extra")
    out = tmp_path / "sb3"
    flags = ["--total-steps", "8192", "--eval-every", "4096", "--eval-envs", "8", "--final-eval-envs", "16"]
    _run("examples/sb3_ppo.py", *flags, "--score-episodes", "8", "--out", str(out))
    report = _check_outputs(out, "sb3_ppo", logged=False)
    assert [c["env_steps"] for c in report["curve"]][-1] == 8192  # the curve ends where training does
    assert all("paired_diff" in c for c in report["curve"])  # the zoomed panel's points
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import sb3_ppo

    from torch_student_env.evaluation import evaluate_policies

    # checkpoint.pt is read with weights_only=True, and plays the held-out engines as in the report
    policy = sb3_ppo.load_policy(out / "checkpoint.pt")
    again = evaluate_policies({"sb3_ppo": policy}, num_envs=16, seed=10_000, history=10, score_episodes=8)
    assert again["sb3_ppo"]["mean_return"] == report["results"]["sb3_ppo"]["mean_return"]

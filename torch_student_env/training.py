"""Helpers shared by the training examples: dataclass flags, checkpoints, and the final report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from torch_student_env.evaluate import evaluate_policies, markdown_table, record_episode
from torch_student_env.policies import BASELINES, make_policy

T = TypeVar("T")


def parse_args(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Flags from a dataclass: `field_name` -> `--field-name`, typed, help from the field metadata."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}.get(
                f.type if isinstance(f.type, str) else f.type.__name__, str
            )
            parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")
    return cls(**vars(parser.parse_args(argv)))


def arg(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (CleanRL style: every knob documented)."""
    return dataclasses.field(default=default, metadata={"help": help})


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def final_report(
    name: str,
    policy,
    out: Path,
    curve: list[dict[str, float]],
    eval_envs: int,
    seed: int,
    device: torch.device | str,
    extra: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate `policy` against every baseline on held-out seeds; write eval.md/json and the PNGs."""
    from torch_student_env.plotting import plot_episode, plot_learning_curve

    policies = {name: policy}
    for baseline in BASELINES:
        policies[baseline] = make_policy(baseline, seed=seed, device=device)
    results = evaluate_policies(policies, num_envs=eval_envs, seed=seed, device=device, progress=True)
    table = markdown_table(results)
    header = f"Evaluation on {eval_envs} held-out episodes (seed {seed}, 1 episode per env)\n\n"
    (out / "eval.md").write_text(header + table + "\n")
    (out / "eval.json").write_text(json.dumps({"results": results, "curve": curve, **(extra or {})}, indent=2))
    baselines = {k: v["mean_return"] for k, v in results.items() if k != name}
    plot_learning_curve(curve, baselines, out / "learning_curve.png", title=name)
    trace = record_episode(policy, seed=seed + 1, device=device)
    plot_episode(trace, out / "episode.png", title=f"{name}, one engine")
    return results

"""Evaluate policies on held-out seeds and print (and write) a Markdown table.

    python scripts/evaluate.py                                   # all five baselines
    python scripts/evaluate.py --policy runs/ppo_cnn/checkpoint.pt --policy time_based
    python scripts/evaluate.py --episodes 2048 --seed 123 --out eval.md

A policy is a baseline name (random, do_nothing, time_based, threshold, oracle) or a checkpoint
written by examples/ppo_cnn.py or examples/dqn_cnn.py. Every policy runs on the same episodes:
env i's first episode under one seed, for i < --episodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torch_student_env.config import normalize_device
from torch_student_env.evaluate import evaluate_policies, markdown_table
from torch_student_env.models import ActorCritic, QNetwork
from torch_student_env.policies import BASELINES, make_policy


def load_policy(spec: str, device: torch.device, seed: int):
    """A baseline by name, or the greedy policy of a training checkpoint."""
    if spec in BASELINES:
        return spec, make_policy(spec, seed=seed, device=device)
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--policy {spec!r} is neither a baseline {BASELINES} nor a checkpoint file")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if "agent" in ckpt:
        model = ActorCritic()
        model.load_state_dict(ckpt["agent"])
    elif "q_net" in ckpt:
        model = QNetwork()
        model.load_state_dict(ckpt["q_net"])
    else:
        raise SystemExit(f"{spec}: not a checkpoint of examples/ppo_cnn.py or examples/dqn_cnn.py")
    model.to(device).eval()
    return f"{path.parent.name or path.stem} ({ckpt.get('global_step', '?'):,} steps)", model.act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", action="append", help="baseline name or checkpoint path (repeatable)")
    parser.add_argument("--episodes", type=int, default=1024, help="episodes per policy (one per env)")
    parser.add_argument("--seed", type=int, default=10_000, help="held-out seed (training uses others)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    policies = dict(load_policy(spec, device, args.seed) for spec in (args.policy or BASELINES))
    results = evaluate_policies(policies, num_envs=args.episodes, seed=args.seed, device=device, progress=True)
    table = f"{args.episodes} episodes per policy, seed {args.seed}\n\n" + markdown_table(results)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

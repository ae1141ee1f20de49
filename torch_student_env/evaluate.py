"""The evaluator's command line: baselines and training checkpoints on held-out seeds, as a
Markdown table (the runners, statistics and reports are `torch_student_env.evaluation`).

    python -m torch_student_env.evaluate                                  # every baseline
    python -m torch_student_env.evaluate --policy runs/ppo_cnn/best.pt --policy time_based
    python -m torch_student_env.evaluate --episodes 2048 --seed 123 --out eval.md
    python -m torch_student_env.evaluate --variants plausible   # each policy on every plausible model
    python -m torch_student_env.evaluate --policy best.pt --policy belief --paired-with belief

A `--policy` is a baseline name (`policies.BASELINES`) or a checkpoint written by
examples/ppo_cnn.py or examples/dqn_cnn.py, loaded with `weights_only=True`. `--variants` scores
every policy on each model of an ensemble (`sim.variants`) and reports its worst: a policy that
relies on one extrapolation of the data shows it there. A baseline that reads the hidden state
(the oracle) plans on each variant's own model; every other policy, `belief` included, plays
the fitted model's plan on all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torch_student_env.config import normalize_device
from torch_student_env.evaluation import (
    HELD_OUT_SEED,
    Policy,
    evaluate_policies,
    evaluate_variants,
    markdown_table,
    markdown_variant_table,
)
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.models import model_from_checkpoint
from torch_student_env.policies import BASELINES, for_model, make_policy
from torch_student_env.sim.variants import resolve


def load_policy(spec: str, device: torch.device, seed: int) -> tuple[str, Policy, int | None]:
    """(name, policy, history): a baseline by name, or the greedy policy of a training checkpoint
    and the window it was trained with (None: a baseline, or the env's default)."""
    if spec in BASELINES:
        return spec, make_policy(spec, seed=seed, device=device), None
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"--policy {spec!r} is neither a baseline {list(BASELINES)} nor a checkpoint file")
    ckpt = torch.load(path, map_location=device, weights_only=True)  # never runs a checkpoint's code
    try:
        model = model_from_checkpoint(ckpt)
    except ValueError as err:
        raise SystemExit(f"{spec}: {err} (examples/ppo_cnn.py and examples/dqn_cnn.py write them)") from None
    model.to(device).eval()
    history = ckpt.get("model", {}).get("history")
    history = history if isinstance(history, int) else None
    return f"{path.parent.name or path.stem} ({ckpt.get('global_step', '?'):,} steps)", model.act, history


def _parser() -> argparse.ArgumentParser:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m torch_student_env.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--policy", action="append", help="baseline name or checkpoint path (repeatable)")
    parser.add_argument("--episodes", type=int, default=1024, help="episodes per policy (one per env)")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out seed (training uses others)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    parser.add_argument("--variants", help="score on each model of this ensemble (sim.variants), e.g. plausible")
    parser.add_argument(
        "--history",
        type=int,
        help="rows in each env's window for every policy (default: the window the checkpoints trained with)",
    )
    parser.add_argument(
        "--score-episodes",
        type=int,
        default=SCORE_WINDOW,
        help=f"the challenge score's window: the last K episodes of a stream on 4 envs (the challenge's: "
        f"{SCORE_WINDOW})",
    )
    parser.add_argument(
        "--paired-with", help="a baseline among the policies: add each one's paired difference to it (e.g. belief)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: evaluate baselines and checkpoints on held-out seeds, print a Markdown table."""
    parser = _parser()
    args = parser.parse_args(argv)
    device = normalize_device(args.device)  # "cuda" -> "cuda:0", "cpu:0" -> "cpu"
    if args.score_episodes < 1:
        parser.error(f"--score-episodes must be >= 1, got {args.score_episodes}")
    specs = args.policy or list(BASELINES)
    if args.paired_with is not None and args.paired_with not in [s for s in specs if s in BASELINES]:
        parser.error(f"--paired-with {args.paired_with!r} is not a baseline among the policies {list(specs)}")
    if args.paired_with is not None and args.variants:
        parser.error("--paired-with applies to the single-model table, not to --variants")
    loaded = {spec: load_policy(spec, device, args.seed) for spec in specs if spec not in BASELINES}
    trained = {history for _, _, history in loaded.values() if history is not None}
    if args.history is None and len(trained) > 1:
        parser.error(f"the checkpoints trained with windows {sorted(trained)}: choose one with --history")
    history = args.history if args.history is not None else next(iter(trained), None)
    if args.variants:
        try:
            variants = resolve(args.variants)
        except ValueError as err:
            parser.error(str(err))
        table = _variant_table(args, specs, loaded, variants, device, history)
    else:
        policies = dict(
            (loaded[spec] if spec in loaded else load_policy(spec, device, args.seed))[:2] for spec in specs
        )
        results = evaluate_policies(
            policies,
            num_envs=args.episodes,
            seed=args.seed,
            device=device,
            progress=True,
            paired_with=args.paired_with,
            score_episodes=args.score_episodes,
            history=history,
        )
        table = f"{args.episodes} episodes per policy, seed {args.seed}{_window(history)}\n\n"
        table += markdown_table(results, paired_with=args.paired_with)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")


def _window(history: int | None) -> str:
    return f", windows of {history} rows" if history is not None else ""


def _variant_table(
    args, specs: list[str], loaded: dict, variants: dict, device: torch.device, history: int | None
) -> str:
    """Every policy on every model of the ensemble: the Markdown table, headed."""
    factories = {}
    for spec in specs:
        if spec in BASELINES:
            factories[spec] = for_model(spec, seed=args.seed, device=device)
        else:
            name, policy, _ = loaded[spec]
            factories[name] = lambda params, policy=policy: policy
    results = evaluate_variants(
        factories, variants, num_envs=args.episodes, seed=args.seed, device=device, history=history
    )
    table = f"{args.episodes} episodes per policy and variant, seed {args.seed}{_window(history)}: "
    return table + "mean return ± 95% CI (failure rate)\n\n" + markdown_variant_table(results)


if __name__ == "__main__":
    main()

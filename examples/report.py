"""The final report of a training run: every learned policy against every baseline on held-out
engines (eval.md, eval.json, the learning curve and one episode drawn), and the verdict line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from torch_student_env.evaluation import (
    HELD_OUT_SEED,
    evaluate_policies,
    evaluate_variants,
    markdown_table,
    record_episode,
    worst_variant,
)
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.policies import BASELINES, for_model, make_policy
from torch_student_env.sim.variants import PLAUSIBLE


@dataclasses.dataclass(frozen=True)
class FinalEvaluation:
    """How the final report evaluates: `eval_envs` held-out engines of `seed`, one episode each;
    every policy with a window of `history` rows (None: the env's default; the window the learned
    ones trained with); on every plausible model too when `variants`; the challenge score over
    the last `score_episodes` of a stream (the challenge's is `SCORE_WINDOW`)."""

    eval_envs: int
    seed: int = HELD_OUT_SEED
    variants: bool = False
    history: int | None = None
    score_episodes: int = SCORE_WINDOW


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What a training run hands its final report: its learning curve, the curve's best point,
    the validator's references (`Validator.references`: the zoomed panel, paired with belief) and
    figures to keep in eval.json (train seconds, env steps, ...)."""

    curve: list[dict[str, float]]
    best: dict[str, float] | None = None
    references: dict[str, float] | None = None
    extra: dict[str, Any] | None = None


def final_report(
    learned: dict[str, Any], out: Path, run: TrainingRun, evaluation: FinalEvaluation, device: torch.device | str
) -> dict[str, dict[str, float]]:
    """Evaluate the `learned` policies (name -> policy; the first is plotted) against every
    baseline on held-out seeds as `evaluation` says; write eval.md/json and the PNGs."""
    curve, best, references, extra = run.curve, run.best, run.references, run.extra
    eval_envs, seed, variants = evaluation.eval_envs, evaluation.seed, evaluation.variants
    history, score_episodes = evaluation.history, evaluation.score_episodes
    from torch_student_env.plotting import plot_episode, plot_learning_curve

    policies = dict(learned)
    for baseline in BASELINES:
        policies[baseline] = make_policy(baseline, seed=seed, device=device)
    # paired with the belief reference: the learned policies' target, compared on the same engines
    results = evaluate_policies(
        policies,
        num_envs=eval_envs,
        seed=seed,
        device=device,
        progress=True,
        # belief: the player's reachable ceiling (the table's column); the rules: the verdict's bar
        paired_with=("belief", *(name for name in BASELINES if BASELINES[name].rule)),
        history=history,
        score_episodes=score_episodes,
    )
    per_variant, worst = {}, None
    if variants:  # every policy on every plausible model: only the oracle plans on each model
        factories = {name: (lambda params, policy=policy: policy) for name, policy in policies.items()}
        factories |= {name: for_model(name, seed, device) for name in BASELINES if BASELINES[name].reads_hidden_state}
        per_variant = evaluate_variants(
            factories, PLAUSIBLE, num_envs=eval_envs, seed=seed, device=device, history=history
        )
        worst = {name: worst_variant(per) for name, per in per_variant.items()}
    table = markdown_table(results, worst, paired_with="belief")
    header = (
        f"Evaluation on {eval_envs} held-out episodes (seed {seed}, 1 episode per env"
        + (f", every policy with a window of {history} rows" if history else "")
        + "). The challenge "
        f"score is the total (mean) reward of the last {score_episodes} episodes of a stream on 4 envs, as the "
        "challenge ranks; the mean ± CI is over the held-out episodes."
        + (
            " The worst plausible model is each policy's lowest mean return over `sim.variants.PLAUSIBLE` "
            "(the same engines), where the data cannot tell the models apart."
            if variants
            else ""
        )
        + " The last column is each policy's mean return less `belief`'s, episode by episode on the same"
        " engines: the precise comparison with the player's reachable ceiling." + "\n\n"
    )
    (out / "eval.md").write_text(header + table + "\n")
    report = {"results": results, "variants": per_variant, "curve": curve, "best": best, **(extra or {})}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    name, policy = next(iter(learned.items()))
    baselines = {k: v["mean_return"] for k, v in results.items() if k not in learned}
    plot_learning_curve(
        curve, baselines, out / "learning_curve.png", title=name.split(" ")[0], best=best, paired=references
    )
    trace = record_episode(policy, seed=seed + 1, device=device, history=history)
    plot_episode(trace, out / "episode.png", title=f"{name}, one engine")
    return results


def best_rule(results: dict[str, dict[str, float]]) -> str:
    """The rule (`policies.Baseline.rule`) with the highest mean return in `results`."""
    return max((name for name in results if name in BASELINES and BASELINES[name].rule),
               key=lambda name: results[name]["mean_return"])  # fmt: skip


def verdict(name: str, results: dict[str, dict[str, float]]) -> str:
    """One line: policy `name` against the best rule and against `belief`. Where the results hold
    paired differences (`evaluate_policies(paired_with=(...))`), "beats" means the paired 95 % CI
    with the rule is above 0: the same engines, so the luck they share cancels. Otherwise it means
    the two CIs are apart."""
    mine, rule = results[name], best_rule(results)
    theirs, paired = results[rule], mine.get("paired", {})
    if rule in paired:
        low, high = (paired[rule]["paired_diff"] + sign * paired[rule]["paired_ci95"] for sign in (-1, 1))
    else:
        low = mine["mean_return"] - mine["ci95"] - theirs["mean_return"] - theirs["ci95"]
        high = mine["mean_return"] + mine["ci95"] - theirs["mean_return"] + theirs["ci95"]
    against_rule = "beats" if low > 0 else "is below" if high < 0 else "is within the CIs of"
    gap = results["oracle"]["mean_return"] - theirs["mean_return"]
    closed = (mine["mean_return"] - theirs["mean_return"]) / gap if gap > 0 else float("nan")
    line = (
        f"{name} {against_rule} the best rule, {rule} ({mine['mean_return']:,.0f} vs {theirs['mean_return']:,.0f}: "
        f"{100 * closed:.0f} % of the gap from it to the oracle"
        + (f"; paired: {_signed(paired[rule])})" if rule in paired else ")")
    )
    if "belief" in paired or "paired_diff" in mine:
        line += f"; against belief, paired: {_signed(paired.get('belief', mine))}"
    return line + "."


def _signed(paired: dict[str, float]) -> str:
    """A paired difference as `+d ± ci`."""
    return f"{paired['paired_diff']:+,.0f} ± {paired['paired_ci95']:,.0f}"

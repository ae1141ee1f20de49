"""Helpers shared by the training examples: dataclass flags, checkpoints, and the final report."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from torch_student_env.evaluation import (
    HELD_OUT_SEED,
    Episodes,
    evaluate_policies,
    evaluate_variants,
    markdown_table,
    paired_difference,
    record_episode,
    run_episodes,
    summarize,
    worst_variant,
)
from torch_student_env.leaderboard import SCORE_WINDOW
from torch_student_env.make import make_env
from torch_student_env.policies import BASELINES, for_model, make_policy
from torch_student_env.sim.variants import PLAUSIBLE

T = TypeVar("T")


def parse_args(cls: type[T], description: str, argv: list[str] | None = None) -> T:
    """Flags from a dataclass: `field_name` -> `--field-name`, typed, help from the field metadata."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if f.type in (bool, "bool", "bool | None"):  # None: leave the choice to the library
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


def check_counter_bins(counter_bins: int, player_keys: bool) -> None:
    """Refuse, before anything is built, counter classes without the counters they are made of."""
    if counter_bins < 0:
        raise SystemExit(f"--counter-bins must be >= 0, got {counter_bins}")
    if counter_bins and not player_keys:
        raise SystemExit("--counter-bins reads the player-side counters: drop --no-player-keys or add --counter-bins 0")


def save_checkpoint(path: Path, **state: Any) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


VALIDATION_SEED = 5_000  # the learning curve's engines; the final table's are held out (10,000, 123)


class Validator:
    """The learning curve's points: the greedy policy on fixed engines (seed 5,000, one episode
    each), and its difference to `belief` on the same engines, episode by episode. Paired, the
    engines' luck cancels: late in the main job's training the difference's CI is ± 25 where the
    return's is ± 90 (256 engines), so the learning curve's zoomed panel can show where the policy
    stands between the best rule and the oracle.
    `belief`, the oracle and the rules are played once, at construction (a few seconds)."""

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", history: int | None = None) -> None:
        self.env_kwargs = {"num_envs": num_envs, "seed": VALIDATION_SEED, "device": device, "fast": False}
        if history is not None:
            self.env_kwargs["history"] = history
        names = ["belief", "oracle", *(name for name in BASELINES if BASELINES[name].rule)]
        policies = {name: make_policy(name, seed=VALIDATION_SEED, device=device) for name in names}
        self.returns = {name: self.play(policy).returns for name, policy in policies.items()}

    def play(self, policy) -> Episodes:
        """`policy`'s episodes on the validation engines (eager: one episode each is not worth a
        compile)."""
        return run_episodes(make_env(privileged=True, **self.env_kwargs), policy)

    def references(self) -> dict[str, float]:
        """Each baseline's mean return less `belief`'s on the validation engines (belief: 0)."""
        belief = self.returns["belief"].double()
        return {name: (returns.double() - belief).mean().item() for name, returns in self.returns.items()}

    def __call__(self, policy, env_steps: int) -> dict[str, float]:
        """One point of the curve: env steps, mean return ± 95 % CI, and `paired_diff` ±
        `paired_ci95` to `belief`."""
        episodes = self.play(policy)
        stats = summarize(episodes)
        point = {"env_steps": env_steps, "mean_return": stats["mean_return"], "ci95": stats["ci95"]}
        return point | paired_difference(episodes.returns, self.returns["belief"])


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


def run_dir(out: str, exp_name: str, seed: int, env_id: str = "TorchStudentEnv-v0") -> Path:
    """`out` if given, else CleanRL's `runs/<env>__<exp>__<seed>__<unix time>`: runs never overwrite."""
    import time

    return Path(out) if out else Path("runs") / f"{env_id}__{exp_name}__{seed}__{int(time.time())}"


class RunLogger:
    """Scalars for TensorBoard (`<run>/events.*`, CleanRL's `charts/*` and `losses/*` tags), and
    W&B when `track` (it mirrors the TensorBoard files). Both are imported lazily."""

    def __init__(self, path: Path, config: dict[str, Any], track: bool = False, project: str = "torch-student-env"):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "TensorBoard logging needs tensorboard: pip install 'torch-student-env[examples]'"
            ) from err
        if track:
            try:
                import wandb
            except ImportError as err:
                raise ImportError("--track logs to Weights & Biases: pip install wandb, then wandb login") from err
            wandb.init(project=project, name=path.name, config=config, sync_tensorboard=True, dir=str(path))
        self.writer = SummaryWriter(str(path))
        table = "\n".join(f"|{k}|{v}|" for k, v in config.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.track = track

    def scalars(self, step: int, **values: float) -> None:
        """Log `tag=value` pairs; `charts_x` -> `charts/x`, `losses_y` -> `losses/y`."""
        for tag, value in values.items():
            self.writer.add_scalar(tag.replace("_", "/", 1), float(value), step)

    def close(self) -> None:
        self.writer.close()
        if self.track:
            import wandb

            wandb.finish()


def run_results(out: Path, best: dict[str, float], curve: list[dict[str, float]], held_out: dict) -> dict[str, Any]:
    """What an example's `main()` returns to a sweep tool: the run folder, the best and final
    validation returns, and the held-out table."""
    return {
        "run_dir": str(out),
        "best_validation_return": best["mean_return"],
        "best_env_steps": best["env_steps"],
        "final_validation_return": curve[-1]["mean_return"] if curve else None,
        "held_out": held_out,
    }

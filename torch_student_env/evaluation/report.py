"""Markdown reports of evaluation results (`evaluate_policies`, `evaluate_variants`)."""

from __future__ import annotations

from torch_student_env.evaluation.stats import worst_variant
from torch_student_env.leaderboard import SCORE_WINDOW


def markdown_variant_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Mean return ± CI of each policy on each variant, and its worst; best worst case first."""
    variants = list(next(iter(results.values())))
    lines = [
        "| policy | " + " | ".join(variants) + " | worst |",
        "|---|" + "---:|" * (len(variants) + 1),
    ]
    for name, per in sorted(results.items(), key=lambda kv: -worst_variant(kv[1])[1]["mean_return"]):
        cells = [
            f"{per[v]['mean_return']:,.0f} ± {per[v]['ci95']:,.0f} ({100 * per[v]['failure_rate']:.0f}%)"
            for v in variants
        ]
        worst, figures = worst_variant(per)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {figures['mean_return']:,.0f} ({worst}) |")
    return "\n".join(lines)


def markdown_table(
    results: dict[str, dict[str, float]],
    worst: dict[str, tuple[str, dict[str, float]]] | None = None,
    paired_with: str | None = None,
) -> str:
    """A Markdown table of `evaluate_policies` results, best mean return first; with `worst`
    (`worst_variant` of each policy's `evaluate_variants` results), a column of each policy's
    mean return on its worst plausible model; with `paired_with` (as given to
    `evaluate_policies`), a column of each policy's paired difference to that one."""
    last = next((r["score_episodes"] for r in results.values() if "score_episodes" in r), SCORE_WINDOW)
    head = (
        f"| policy | mean return ± 95% CI | challenge score: last {last} (mean) | failure rate | repairs"
        " | life (flights)"
    )
    head += " | worst plausible model |" if worst else " |"
    head += f" − {paired_with}, paired |" if paired_with else ""
    lines = [
        head + " episodes |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (bool(worst) + bool(paired_with)) + "---:|",
    ]
    for name, r in sorted(results.items(), key=lambda kv: -kv[1]["mean_return"]):
        score = f"{r['score_total']:,.0f} ({r['score_mean']:,.0f})" if "score_total" in r else "–"
        row = (
            f"| {name} | {r['mean_return']:,.0f} ± {r['ci95']:,.0f} | {score} | "
            f"{100 * r['failure_rate']:.1f}% | {r['mean_repairs']:.2f} | {r['mean_life']:.0f} |"
        )
        if worst:
            variant, figures = worst[name]
            row += f" {figures['mean_return']:,.0f} ({variant}) |"
        if paired_with:
            row += " – |" if name == paired_with else f" {r['paired_diff']:+,.0f} ± {r['paired_ci95']:,.0f} |"
        lines.append(row + f" {r['episodes']} |")
    return "\n".join(lines)

"""Batched evaluation: runners (`runners`), statistics (`stats`) and Markdown reports (`report`);
the command line is `python -m torch_student_env.evaluate`."""

from torch_student_env.evaluation.report import markdown_table, markdown_variant_table
from torch_student_env.evaluation.runners import (
    HELD_OUT_SEED,
    Episodes,
    Policy,
    evaluate_policies,
    evaluate_variants,
    record_episode,
    run_episodes,
    run_stream,
)
from torch_student_env.evaluation.stats import challenge_score, paired_difference, summarize, worst_variant

__all__ = [
    "HELD_OUT_SEED",
    "Episodes",
    "Policy",
    "challenge_score",
    "evaluate_policies",
    "evaluate_variants",
    "markdown_table",
    "markdown_variant_table",
    "paired_difference",
    "record_episode",
    "run_episodes",
    "run_stream",
    "summarize",
    "worst_variant",
]

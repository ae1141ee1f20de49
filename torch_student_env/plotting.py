"""Pictures: the learning curve against the baselines, and one engine's episode ([examples] extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torch_student_env.spec import SENSOR_NAMES, Action


def _figure(**kwargs):
    """A `matplotlib.figure.Figure`: no pyplot state, and the user's backend is never switched."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'torch-student-env[examples]'") from err
    return Figure(layout="constrained", **kwargs)


def plot_learning_curve(
    curve: list[dict[str, float]],
    baselines: dict[str, float],
    path: str | Path,
    title: str = "PPO + 1D-CNN",
    best: dict[str, float] | None = None,
    paired: dict[str, float] | None = None,
) -> Path:
    """Validation return (mean, 95 % CI band) against env steps; the best checkpoint as a star;
    the baselines' held-out returns as labelled horizontal lines.

    With `paired` (each baseline's mean return less `belief`'s on the validation engines, as
    `examples/training.Validator.references` gives) and curve points that hold `paired_diff` ±
    `paired_ci95`, a second panel shows the curve as its difference to `belief` on the same
    engines, against those references: the band from the best rule to the oracle, a few percent
    of the return that the full scale and the unpaired CI hide.
    """
    paired = paired if paired and curve and all("paired_diff" in c for c in curve) else None
    fig = _figure(figsize=(13, 4.8) if paired else (8, 4.8))
    axes = fig.subplots(1, 2 if paired else 1)
    axes = list(axes) if paired else [axes]
    steps = np.array([c["env_steps"] for c in curve])
    colors = ["tab:green", "tab:purple", "tab:blue", "tab:orange", "tab:red", "tab:brown", "tab:gray", "tab:olive"]
    ranked = sorted(baselines, key=lambda name: -baselines[name])
    color_of = dict(zip(ranked, colors, strict=False))
    _curve_panel(axes[0], steps, curve, "mean_return", "ci95", f"{title} (greedy, validation seeds)")
    if best is not None and best.get("env_steps"):
        axes[0].plot(best["env_steps"], best["mean_return"], "*", color="gold", markersize=16, markeredgecolor="black",
                     label=f"best checkpoint ({best['mean_return']:,.0f} at {best['env_steps']:,} steps)")  # fmt: skip
    for name in ranked:
        value = baselines[name]
        axes[0].axhline(value, linestyle="--", linewidth=1.2, color=color_of[name], label=f"{name} ({value:,.0f})")
    axes[0].set_ylabel("mean episode return")
    axes[0].set_title("Learning curve (baselines: held-out seeds)")
    axes[0].legend(fontsize=8, loc="best")
    if paired:
        ax = axes[1]
        diff = _curve_panel(ax, steps, curve, "paired_diff", "paired_ci95", title)
        shown, band = zoom_band(paired, diff)
        for name, value in shown.items():
            ax.axhline(value, linestyle="--", linewidth=1.2, color=color_of.get(name, "tab:gray"))
            # at the left, where the curve is still far below the band
            ax.text(0.01, value, f" {name} ({value:+,.0f})", transform=ax.get_yaxis_transform(), ha="left",
                    va="bottom", fontsize=8, color=color_of.get(name, "tab:gray"))  # fmt: skip
        ax.set_ylim(*band)
        ax.set_ylabel("mean return − belief's, same engines")
        ax.set_title("zoomed: paired with belief on the validation engines")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def zoom_band(paired: dict[str, float], diff: np.ndarray) -> tuple[dict[str, float], tuple[float, float]]:
    """The zoomed panel's lines and y-range: `belief` (0), the oracle and the best of the other
    references (the rules), and a range that holds them and the upper half of the curve's points
    (the first points, near random, would squash the band the policies of interest lie in)."""
    rules = {name: value for name, value in paired.items() if name not in ("belief", "oracle")}
    shown = {name: paired[name] for name in ("belief", "oracle") if name in paired}
    if rules:
        best_rule = max(rules, key=rules.get)
        shown[best_rule] = rules[best_rule]
    low = min(min(shown.values()), float(np.median(diff)))
    high = max(max(shown.values()), float(diff.max()))
    margin = 0.3 * (high - low) + 1.0
    return shown, (low - margin, high + margin)


def _curve_panel(ax, steps: np.ndarray, curve: list[dict[str, float]], key: str, ci_key: str, label: str) -> np.ndarray:
    """One panel's curve of `key` with its `ci_key` band; returns the curve's values."""
    values = np.array([c[key] for c in curve])
    ci = np.array([c[ci_key] for c in curve])
    ax.fill_between(steps, values - ci, values + ci, color="black", alpha=0.2, label="95 % CI")
    ax.plot(steps, values, marker="o", markersize=4, color="black", label=label)
    ax.set_xlabel("env steps (1 step = 10 flights)")
    ax.grid(alpha=0.3)
    return values


def plot_episode(trace: dict[str, np.ndarray], path: str | Path, title: str = "one engine's episode") -> Path:
    """The 7 sensors over flights, repair/sell markers, and hidden health."""
    has_health = "health" in trace
    rows = len(SENSOR_NAMES) + int(has_health)
    fig = _figure(figsize=(9, 1.55 * rows + 0.8))
    axes = fig.subplots(rows, 1, sharex=True)
    flight = trace["flight"]
    repairs = trace["action_flight"][trace["action"] == Action.REPAIR]
    sells = trace["action_flight"][trace["action"] == Action.SELL]
    for i, (ax, name) in enumerate(zip(axes, SENSOR_NAMES, strict=False)):  # axes has a health row more
        ax.scatter(flight, trace["sensors"][:, i], s=4, color="tab:blue")
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if has_health:
        ax = axes[-1]
        ax.plot(flight, trace["health"], color="black", linewidth=1.2, label="health")
        ax.set_ylabel("hidden health", fontsize=8)
        ax.set_ylim(min(0.0, float(trace["health"].min()) - 0.05), 1.05)
        ax.grid(alpha=0.3)
    for ax in axes:
        for f in repairs:
            ax.axvline(f, color="tab:green", linewidth=1.0, alpha=0.8)
        for f in sells:
            ax.axvline(f, color="tab:purple", linewidth=1.5, linestyle="--")
    end = "failed" if trace["failed"] else ("sold" if len(sells) else "time limit")
    axes[0].set_title(
        f"{title}: {len(flight) - 1} flights, {len(repairs)} repairs (green), ended: {end}"
        f" (purple = sale), return {trace['episode_return']:,.0f}",
        fontsize=9,
    )
    axes[-1].set_xlabel("flight")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path

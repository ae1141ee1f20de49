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
    zoom: tuple[float, float] | None = None,
) -> Path:
    """Validation return (mean, 95 % CI band) against env steps; the best checkpoint as a star;
    the baselines' held-out returns as labelled horizontal lines.

    With `zoom` = (low, high), e.g. the best rule's and the oracle's returns, a second panel
    shows the same curve on that band (extended down to the curve's best point), where the
    policies of interest differ by a few percent that the full scale hides.
    """
    fig = _figure(figsize=(13, 4.8) if zoom else (8, 4.8))
    axes = fig.subplots(1, 2 if zoom else 1)
    axes = list(axes) if zoom else [axes]
    steps = np.array([c["env_steps"] for c in curve])
    mean = np.array([c["mean_return"] for c in curve])
    ci = np.array([c["ci95"] for c in curve])
    colors = ["tab:green", "tab:purple", "tab:blue", "tab:orange", "tab:red", "tab:brown", "tab:gray", "tab:olive"]
    ranked = sorted(baselines.items(), key=lambda kv: -kv[1])
    band = (-np.inf, np.inf)
    if zoom:
        low, high = zoom
        margin = 0.35 * (high - low)
        # down to the curve's best point too when it is below the band (validation seeds are not
        # the baselines' held-out ones), so the panel always shows where the policy stands
        band = (min(low, float(mean.max()) if len(mean) else low) - margin, high + margin)
    for k, ax in enumerate(axes):
        ax.fill_between(steps, mean - ci, mean + ci, color="black", alpha=0.2, label="95 % CI")
        ax.plot(steps, mean, marker="o", markersize=4, color="black", label=f"{title} (greedy, validation seeds)")
        if best is not None and best.get("env_steps"):
            ax.plot(best["env_steps"], best["mean_return"], "*", color="gold", markersize=16, markeredgecolor="black",
                    label=f"best checkpoint ({best['mean_return']:,.0f} at {best['env_steps']:,} steps)")  # fmt: skip
        for (name, value), color in zip(ranked, colors, strict=False):
            ax.axhline(value, linestyle="--", linewidth=1.2, color=color, label=f"{name} ({value:,.0f})")
            if k == 1 and band[0] <= value <= band[1]:  # the zoomed panel names the lines it shows
                ax.text(0.99, value, f"{name} ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                        fontsize=8, color=color)  # fmt: skip
        ax.set_xlabel("env steps (1 step = 10 flights)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean episode return")
    axes[0].set_title("Learning curve")
    axes[0].legend(fontsize=8, loc="best")
    if zoom:
        axes[1].set_ylim(*band)
        axes[1].set_title("zoomed on the band from the best rule to the oracle")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


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

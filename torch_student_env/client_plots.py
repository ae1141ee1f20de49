"""The challenge client's two plots, returned as `matplotlib.figure.Figure`s ([examples] extra)."""

from __future__ import annotations

import numpy as np

from torch_student_env.plotting import _figure
from torch_student_env.spec import FEATURE_NAMES, NUM_FEATURES, Action


def plot_observations(
    observations: list[np.ndarray],
    actions: list[int] | None = None,
    sensor_names: list[str] | None = None,
    figsize: tuple = (12, 4),
    title: str = "Observation Dimensions Over Time",
):
    """The client's `plot_observations`: each of the 9 dimensions over the concatenated steps.

    `observations` is a list of per-step arrays (`(rows, 9)`, or one `(9,)` row); a repair (1) or
    sale (2) in `actions` (one per step) marks the first row of its step. Returns a
    `matplotlib.figure.Figure` with one axis per dimension (`figsize` is per dimension).
    """
    batches = [np.atleast_2d(np.asarray(o, dtype=np.float32)) for o in observations]
    batches = [b for b in batches if b.size]
    names = list(sensor_names) if sensor_names is not None else list(FEATURE_NAMES)
    if len(names) != NUM_FEATURES:
        raise ValueError(f"sensor_names must name {NUM_FEATURES} dimensions, got {len(names)}")
    if actions is not None and len(actions) != len(observations):
        raise ValueError(f"actions must have one entry per observation batch: {len(actions)} for {len(observations)}")
    fig = _figure(figsize=(figsize[0], figsize[1] * NUM_FEATURES))
    axes = fig.subplots(NUM_FEATURES, 1, sharex=True)
    if not batches:
        axes[0].set_title("no observations")
        return fig
    rows = np.concatenate(batches)
    starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
    for d, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.plot(rows[:, d], linewidth=1.0)
        ax.set_title(f"{title}: {name}", fontsize=9)
        for start, action in zip(starts, actions or (), strict=False):
            if action in (Action.REPAIR, Action.SELL):
                color = "tab:green" if action == Action.REPAIR else "tab:purple"
                ax.axvline(start, color=color, linewidth=1.0, alpha=0.8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("flight (concatenated steps; green: repair, purple: sale)")
    return fig


def plot_rewards(
    rewards: list[float],
    actions: list[int] | None = None,
    figsize: tuple = (12, 6),
    title: str = "Step Rewards Over Time",
):
    """The client's `plot_rewards`: step rewards (colored by action) with their total in the
    legend. Returns a `matplotlib.figure.Figure`."""
    rewards = np.asarray(rewards, dtype=np.float64)
    fig = _figure(figsize=figsize)
    ax = fig.subplots()
    ax.plot(rewards, color="black", linewidth=1.0, label=f"step reward (total {rewards.sum():,.1f})")
    if actions is not None:
        acts = np.asarray(actions)
        for action, color in ((Action.REPAIR, "tab:green"), (Action.SELL, "tab:purple")):
            where = np.flatnonzero(acts == action)
            ax.scatter(where, rewards[where], color=color, zorder=3, label=action.name.lower().replace("_", " "))
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set(xlabel="step", ylabel="reward", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig

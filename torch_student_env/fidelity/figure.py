"""The fidelity figure: real against simulated rewards, failures, sensor drift and totals."""

from __future__ import annotations

import numpy as np

from torch_student_env.spec import SENSOR_NAMES

_MOVING = ("HP_Nmech", "HPC_Tout", "HPC_Pout_st")


def draw(policies: dict[str, tuple[dict, dict]], single_totals: list[float], single_real: float):
    """A 2x2 `matplotlib.figure.Figure` (no pyplot, no global backend change) of the
    `(real, simulated)` summaries of each policy: step rewards and sensor drift of the policy
    with the most repairs, failure flights of every policy that failed, the 250-flight engine."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (rewards, failures), (drift, totals) = fig.subplots(2, 2)
    with_rows = {name: pair for name, pair in policies.items() if pair[0]["sensors"] is not None}
    if not with_rows:
        raise ValueError("the figure needs a log with rows (obs) for its reward and sensor panels; none has them")
    real, sim = max(with_rows.values(), key=lambda pair: len(pair[0]["fly"]))

    _rewards_panel(rewards, real, sim)
    _failures_panel(failures, policies)
    _drift_panel(drift, real, sim)

    totals.hist(single_totals, bins=24, color="tab:gray", alpha=0.7, label="simulated engines")
    totals.axvline(single_real, color="tab:red", lw=2, label=f"real engine: {single_real:,.0f}")
    totals.set(
        xlabel="episode return",
        ylabel="engines",
        title="The 250-flight schedule (repairs at 50/100/150/200, sale at 250)",
    )
    totals.legend(fontsize=8)
    return fig


def _rewards_panel(rewards, real: dict, sim: dict) -> None:
    """Step rewards by repairs and steps since the last one: real dots, simulated lines."""
    for k in range(6):
        keys = [(int(key.split(",")[1]), key) for key in real["fly"] if key.startswith(f"{k},")]
        keys = sorted((s, key) for s, key in keys if real["fly"][key][1] >= 30)
        if not keys:
            continue
        x = [s + 1 for s, _ in keys]
        line = rewards.plot(x, [sim["fly"][key][0] for _, key in keys], label=f"{k} repairs")[0]
        rewards.plot(x, [real["fly"][key][0] for _, key in keys], "o", color=line.get_color(), ms=5)
    rewards.set(
        xlabel="fly steps since the last repair (10 flights each)",
        ylabel="mean step reward",
        title="Step reward: real (dots) against simulated (lines)",
    )
    rewards.axhline(0, color="grey", lw=0.6)
    rewards.legend(fontsize=8)


def _failures_panel(failures, policies: dict[str, tuple[dict, dict]]) -> None:
    """The failure flight's CDF under each policy that failed, real and simulated."""
    for policy, (real_p, sim_p) in policies.items():
        if not real_p["failure_flights"]:
            continue
        color = None
        for name, flights, style in (
            ("real", real_p["failure_flights"], ":"),
            ("simulated", sim_p["failure_flights"], "-"),
        ):
            xs = np.sort(flights)
            ys = np.arange(1, len(xs) + 1) / len(xs)
            label = f"{policy}, {name} (n={len(xs)})"
            color = failures.step(xs, ys, style, where="post", label=label, color=color)[0].get_color()
    failures.set(
        xlabel="flight of the failure",
        ylabel="share of failed episodes",
        title="Failure flight under each policy's logged actions (CDF)",
    )
    failures.legend(fontsize=8)


def _drift_panel(drift, real: dict, sim: dict) -> None:
    """The wear sensors' drift over a fresh engine's steps, in row-noise units."""
    steps = np.arange(1, len(real["sensors"]["sensor_by_step"]) + 1)
    for name, color in zip(_MOVING, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        i = SENSOR_NAMES.index(name)
        noise = real["sensors"]["noise"][i]
        for source, style, label in ((real, "o", "real"), (sim, "-", "simulated")):
            values = np.array([row[i] for row in source["sensors"]["sensor_by_step"]])
            drift.plot(steps, (values - values[0]) / noise, style, color=color, label=f"{name}, {label}")
    drift.set(
        xlabel="fly step of a fresh engine",
        ylabel="change since step 1, in row-noise units",
        title="Sensor drift with wear (real dots, simulated lines)",
    )
    drift.legend(fontsize=7, ncol=2)

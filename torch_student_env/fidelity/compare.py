"""The figures that decide a policy, from episode logs, and the checks of simulated against real.

`summarize` reduces a list of `LoggedEpisode`s (real, or replays) to plain figures (JSON-able, so
the package can ship the real ones without the data); `compare` turns a real and a simulated
summary into `Check`s, each with the target it must meet.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from torch_student_env.fidelity.data import LoggedEpisode, step_contexts
from torch_student_env.spec import DTAMB_COLUMN, NUM_SENSORS, SENSOR_NAMES, Action

MIN_BIN = 30  # real steps a (repairs, steps-since-repair) bin needs to be compared
FRESH_STEPS = 6  # fly steps of a fresh engine whose rewards are compared one by one
NEAR_ZERO = 100.0  # a bin's tolerance is 10 % of max(|real mean|, this): profit crosses 0 there


def summarize(episodes: list[LoggedEpisode]) -> dict:
    """Reward by step context, failure flights, returns, sensor level/drift/noise, DTAMB."""
    fly, repair = defaultdict(list), defaultdict(list)
    failing, first_flight, sale, failure_flights = [], [], [], []
    fresh_rows, fresh_since = [], []
    for ep in episodes:
        for ctx, reward, row in zip(step_contexts(ep.actions), ep.rewards, ep.rows, strict=True):
            if ctx.terminal and ep.failed:
                (first_flight if ep.flights[-1] == 0 else failing).append(reward)
            elif ctx.action == Action.SELL:
                sale.append(reward)
            elif ctx.action == Action.REPAIR:
                repair[min(ctx.repairs_before, 5)].append(reward)
            else:
                fly[f"{ctx.repairs_before},{ctx.since_repair}"].append(reward)
                if ctx.repairs_before == 0 and ctx.since_repair < FRESH_STEPS:
                    fresh_rows.append(row), fresh_since.append(ctx.since_repair)
        if ep.failed:
            failure_flights.append(ep.failure_flight())
    rows, since = np.array(fresh_rows), np.array(fresh_since, dtype=float)
    design = np.stack([np.ones(len(rows)), rows[:, DTAMB_COLUMN] - 10.0, since], 1)
    coef, *_ = np.linalg.lstsq(design, rows[:, :NUM_SENSORS], rcond=None)
    last_rows = np.array([row for ep in episodes for row in ep.rows])
    return {
        "episodes": len(episodes),
        "fly": {key: [float(np.mean(v)), len(v)] for key, v in fly.items()},
        "repair": {str(k): [float(np.mean(v)), len(v)] for k, v in repair.items()},
        "failing_reward": float(np.mean(failing)) if failing else None,
        "first_flight_failure": [float(np.mean(first_flight)) if first_flight else None, len(first_flight)],
        "sale_reward": float(np.mean(sale)) if sale else None,
        "failure_flights": sorted(int(f) for f in failure_flights),
        "mean_return": float(np.mean([ep.total for ep in episodes])),
        "healthy_row": rows[since == 0, :NUM_SENSORS].mean(0).tolist(),
        "drift_per_step": coef[2].tolist(),
        "sensor_by_step": [rows[since == s, :NUM_SENSORS].mean(0).tolist() for s in range(FRESH_STEPS)],
        "noise": (rows[:, :NUM_SENSORS] - design @ coef).std(0).tolist(),
        "dtamb": {
            "mean": float(last_rows[:, DTAMB_COLUMN].mean()),
            "std": float(last_rows[:, DTAMB_COLUMN].std()),
            "floor_share": float(np.mean(last_rows[:, DTAMB_COLUMN] <= last_rows[:, DTAMB_COLUMN].min() + 1e-3)),
        },
    }


@dataclass(frozen=True)
class Check:
    """One figure, real against simulated, and whether it meets its target."""

    group: str
    name: str
    real: float
    sim: float
    target: str
    passed: bool | None  # None: reported, no target

    def row(self) -> str:
        """This check as a Markdown table row."""
        mark = {True: "yes", False: "**no**", None: ""}[self.passed]
        return f"| {self.group} | {self.name} | {_fmt(self.real)} | {_fmt(self.sim)} | {self.target} | {mark} |"


def _fmt(x: float) -> str:
    if x != x:  # NaN: no figure on this side
        return ""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.4g}"


def ks_distance(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(
        np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)))
    )


def _relative(group: str, name: str, real: float, sim: float, tolerance: float, scale: float | None = None) -> Check:
    scale = abs(real) if scale is None else scale
    ok = abs(sim - real) <= tolerance * scale
    target = f"±{tolerance:.0%}" if scale == abs(real) else f"±{tolerance * scale:.0f}"
    return Check(group, name, real, sim, target, ok)


def compare(real: dict, sim: dict) -> list[Check]:
    """Every fidelity check of a simulated summary against the real one."""
    checks = []
    for s in range(FRESH_STEPS):
        key = f"0,{s}"
        checks.append(
            _relative("fly reward, fresh engine", f"step {s + 1}", real["fly"][key][0], sim["fly"][key][0], 0.05)
        )
    for key, (mean, count) in sorted(real["fly"].items(), key=lambda kv: tuple(map(int, kv[0].split(",")))):
        k, s = key.split(",")
        if count >= MIN_BIN and key in sim["fly"]:
            scale = max(abs(mean), NEAR_ZERO)
            name = f"{k} repairs, step {int(s) + 1} after (n={count})"
            checks.append(_relative("fly reward by bin", name, mean, sim["fly"][key][0], 0.10, scale))
    for k, (mean, count) in sorted(real["repair"].items()):
        if count >= MIN_BIN and k in sim["repair"]:
            checks.append(_relative("repair step reward", f"repair {int(k) + 1}", mean, sim["repair"][k][0], 0.05))
    checks.append(_relative("episode end", "failing step reward", real["failing_reward"], sim["failing_reward"], 0.05))
    if real["sale_reward"] is not None and sim["sale_reward"] is not None:
        checks.append(_relative("episode end", "sale reward", real["sale_reward"], sim["sale_reward"], 0.05))
    share = [x["first_flight_failure"][1] / max(len(x["failure_flights"]), 1) for x in (real, sim)]
    checks.append(Check("episode end", "share of failures on a step's first flight", *share, "reported", None))
    rf, sf = real["failure_flights"], sim["failure_flights"]
    ratio = float(np.median(sf) / np.median(rf))
    checks.append(
        Check(
            "failure flight",
            "median flight",
            float(np.median(rf)),
            float(np.median(sf)),
            "ratio 0.9-1.1",
            0.9 <= ratio <= 1.1,
        )
    )
    ks = ks_distance(rf, sf)
    checks.append(Check("failure flight", "KS distance, real to simulated", float("nan"), ks, "< 0.15", ks < 0.15))
    checks.append(_relative("return", "mean episode return", real["mean_return"], sim["mean_return"], 0.10))
    for i, name in enumerate(SENSOR_NAMES):
        checks.append(_relative("healthy row", name, real["healthy_row"][i], sim["healthy_row"][i], 0.01))
    for i, name in enumerate(SENSOR_NAMES):
        r, s = real["drift_per_step"][i], sim["drift_per_step"][i]
        moves = abs(r) * FRESH_STEPS > real["noise"][i]  # drifts past its noise over a fresh engine's life
        if moves:
            ok = np.sign(r) == np.sign(s) and 1 / 1.5 <= s / r <= 1.5
            checks.append(Check("drift per step", name, r, s, "same sign, ×1.5", bool(ok)))
        else:
            checks.append(
                Check(
                    "drift per step",
                    f"{name} (flat)",
                    r,
                    s,
                    f"|drift| × {FRESH_STEPS} < noise",
                    bool(abs(s) * FRESH_STEPS < real["noise"][i] * 1.5),
                )
            )
    for i, name in enumerate(SENSOR_NAMES):
        checks.append(Check("row noise", name, real["noise"][i], sim["noise"][i], "reported", None))
    for key in ("mean", "std", "floor_share"):
        checks.append(Check("DTAMB, last row of a step", key, real["dtamb"][key], sim["dtamb"][key], "reported", None))
    return checks

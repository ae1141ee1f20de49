"""The figures that decide a policy, from episode logs, and the checks of simulated against real.

`summarize` reduces a list of `LoggedEpisode`s (real, or replays) to plain figures (JSON-able, so
the package can ship the real ones without the data); `compare` turns a real and a simulated
summary into `Check`s, each with the target it must meet.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from torch_student_env.fidelity.data import LoggedEpisode, step_contexts
from torch_student_env.spec import DTAMB_COLUMN, NUM_SENSORS, SENSOR_NAMES, Action

MIN_BIN = 30  # real steps (or failures) a figure needs to be compared
FRESH_STEPS = 6  # fly steps of a fresh engine whose rewards are compared one by one
CALLS = 10  # per-call mean rewards compared for the first calls of an episode
# A policy that never repairs earns the same first 10 calls every episode: their means are
# known to within about 1 %, so its target is tighter than the ±5 % of the others.
NEVER_REPAIRED_CALL_TOLERANCE = 0.03
NEAR_ZERO = 100.0  # a bin's tolerance is a share of max(|real mean|, this): profit crosses 0 there
AGE_BINS = (0, 100, 200, 250, 300, 350, 400, 1001)  # flights: where failures fall, by engine age
SINCE_BINS = (0, 20, 40, 50, 60, 80, 100, 120, 1001)  # flights since the last repair (or the start)
CHI2_BIN = 10  # flights: the chi-square tests count failures per step of the logs
CHI2_MIN_EXPECTED = 5.0  # adjacent bins are merged until each expects this many real episodes
CHI2_P_TARGET = 0.01


def _binned(values: list[int], edges: tuple[int, ...]) -> list[int]:
    return np.histogram(values, bins=edges)[0].tolist() if values else [0] * (len(edges) - 1)


def summarize(episodes: list[LoggedEpisode]) -> dict:
    """Reward by step context and by call, failures (flights, ages, rows), returns, sensors, DTAMB."""
    fly, repair, calls = defaultdict(list), defaultdict(list), defaultdict(list)
    failing, first_flight, sale, failure_flights, never_repaired, failing_rows = [], [], [], [], [], []
    failure_since = []
    fresh_rows, fresh_since = [], []
    for ep in episodes:
        rows = ep.rows if ep.rows is not None else (None,) * len(ep.actions)
        last_repair = 0
        for i, (ctx, reward, row) in enumerate(zip(step_contexts(ep.actions), ep.rewards, rows, strict=True)):
            if ctx.terminal and ep.failed:
                (first_flight if ep.first_flight_failure else failing).append(reward)
                if ctx.action == Action.REPAIR:  # a failing repair step fails after its repair
                    last_repair = ctx.age
                break
            if i < CALLS:
                calls[i].append(reward)
            if ctx.action == Action.SELL:
                sale.append(reward)
            elif ctx.action == Action.REPAIR:
                repair[min(ctx.repairs_before, 5)].append(reward)
                last_repair = ctx.age
            else:
                fly[f"{ctx.repairs_before},{ctx.since_repair}"].append(reward)
                if ctx.repairs_before == 0 and ctx.since_repair < FRESH_STEPS and row is not None:
                    fresh_rows.append(row), fresh_since.append(ctx.since_repair)
        if ep.failed:
            flight = ep.failure_flight()
            failure_flights.append(flight)  # a failure's flight is the engine's age at it
            failure_since.append(flight - last_repair)
            if Action.REPAIR not in ep.actions:
                never_repaired.append(flight)
            if ep.rows_per_step is not None:
                failing_rows.append(ep.rows_per_step[-1])
    summary = {
        "episodes": len(episodes),
        "fly": {key: [float(np.mean(v)), len(v), float(np.std(v))] for key, v in fly.items()},  # mean, n, std
        "repair": {str(k): [float(np.mean(v)), len(v)] for k, v in repair.items()},
        "repair_all": [float(np.mean(sum(repair.values(), []))), sum(map(len, repair.values()))] if repair else None,
        "calls": [[float(np.mean(calls[i])), len(calls[i])] for i in range(CALLS) if calls[i]],
        "failing_reward": float(np.mean(failing)) if failing else None,
        "first_flight_failure": [float(np.mean(first_flight)) if first_flight else None, len(first_flight)],
        "sale_reward": float(np.mean(sale)) if sale else None,
        "failure_flights": sorted(int(f) for f in failure_flights),
        "never_repaired_life": sorted(int(f) for f in never_repaired),
        "failing_step_rows": np.bincount(failing_rows, minlength=11).tolist() if failing_rows else None,
        "failures_by_age": _binned(failure_flights, AGE_BINS),
        "failures_by_since_repair": _binned(failure_since, SINCE_BINS),
        "failure_since_repair": sorted(int(f) for f in failure_since),
        "mean_return": float(np.mean([ep.total for ep in episodes])),
        "sensors": None,
    }
    if fresh_rows:
        rows, since = np.array(fresh_rows), np.array(fresh_since, dtype=float)
        design = np.stack([np.ones(len(rows)), rows[:, DTAMB_COLUMN] - 10.0, since], 1)
        coef, *_ = np.linalg.lstsq(design, rows[:, :NUM_SENSORS], rcond=None)
        last_rows = np.array([row for ep in episodes if ep.rows is not None for row in ep.rows])
        summary["sensors"] = {
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
    return summary


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


def _counts_table(group: str, edges: tuple[int, ...], real: list[int], sim: list[int]) -> list[Check]:
    """Reported shares of failures per bin (no target: a picture of where failures fall)."""
    total_real, total_sim = max(sum(real), 1), max(sum(sim), 1)
    return [
        Check(group, f"{lo}-{hi - 1} flights", r / total_real, s / total_sim, "reported", None)
        for lo, hi, r, s in zip(edges[:-1], edges[1:], real, sim, strict=True)
        if r or s
    ]


def failure_timing_test(real: list[int], real_episodes: int, sim: list[int], sim_episodes: int) -> tuple[float, int]:
    """Chi-square test that real failures fall where simulated ones do: (p-value, degrees of freedom).

    `real` and `sim` are the flights (an age, or flights since a repair) at which each failed
    episode failed, out of `real_episodes` and `sim_episodes` episodes; the episodes that did not
    fail (sold) form one more bin, so the test also sees how many fail. Bins are `CHI2_BIN`
    flights, merged left to right until each expects `CHI2_MIN_EXPECTED` real episodes (a short
    last bin joins the one before). The expectation is the simulated share times the real
    count, and each term's variance counts the simulation's own noise too (a two-sample test):
    (O - E)^2 / (E (1 + real_episodes / sim_episodes)). With no bin to compare: (nan, 0).
    """
    top = max(real + sim, default=0) // CHI2_BIN + 1
    observed = np.bincount(np.array(real, dtype=int) // CHI2_BIN, minlength=top).astype(float)
    simulated = np.bincount(np.array(sim, dtype=int) // CHI2_BIN, minlength=top).astype(float)
    observed = np.append(observed, real_episodes - len(real))
    simulated = np.append(simulated, sim_episodes - len(sim))
    expected = simulated * real_episodes / max(sim_episodes, 1)
    merged: list[list[float]] = []  # [observed, expected] per merged bin
    pending = [0.0, 0.0]
    for o, e in zip(observed[:-1], expected[:-1], strict=True):
        pending = [pending[0] + o, pending[1] + e]
        if pending[1] >= CHI2_MIN_EXPECTED:
            merged.append(pending)
            pending = [0.0, 0.0]
    if pending[1] > 0 or pending[0] > 0:
        if merged:
            merged[-1] = [merged[-1][0] + pending[0], merged[-1][1] + pending[1]]
        else:
            merged.append(pending)
    if expected[-1] >= CHI2_MIN_EXPECTED:  # the episodes that did not fail
        merged.append([observed[-1], expected[-1]])
    elif merged:
        merged[-1] = [merged[-1][0] + observed[-1], merged[-1][1] + expected[-1]]
    bins = np.array([b for b in merged if b[1] > 0])
    if len(bins) < 2:
        return float("nan"), 0
    chi2 = float(np.sum((bins[:, 0] - bins[:, 1]) ** 2 / (bins[:, 1] * (1 + real_episodes / sim_episodes))))
    dof = len(bins) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(chi2 / 2))), dof


def _timing_checks(real: dict, sim: dict) -> list[Check]:
    """The chi-square targets: failures by engine age and by flights since the last repair."""
    checks = []
    for name, key in (("by engine age", "failure_flights"), ("by flights since repair", "failure_since_repair")):
        p, dof = failure_timing_test(real[key], real["episodes"], sim[key], sim["episodes"])
        if dof:
            target = f"p ≥ {CHI2_P_TARGET}"
            checks.append(
                Check(
                    "failure timing (chi-square)", f"{name}: p ({dof} dof)", float("nan"), p, target, p >= CHI2_P_TARGET
                )
            )
    return checks


def compare(real: dict, sim: dict) -> list[Check]:
    """Every fidelity check of a simulated summary against the real one, where the real log has
    enough data for it (a policy that never flies has no fly bins, one never repaired no repairs)."""
    checks = _reward_checks(real, sim) + _failure_checks(real, sim) + _life_checks(real, sim)
    checks.append(_relative("return", "mean episode return", real["mean_return"], sim["mean_return"], 0.05))
    if real["sensors"] is not None and sim["sensors"] is not None:
        checks += _sensor_checks(real["sensors"], sim["sensors"])
    return checks


def _reward_checks(real: dict, sim: dict) -> list[Check]:
    """Rewards: flying (fresh engines, by repairs and step since), per call, repairs, the episode's end."""
    checks = []
    for s in range(FRESH_STEPS):
        key = f"0,{s}"
        if real["fly"].get(key, (0, 0))[1] >= MIN_BIN and key in sim["fly"]:
            checks.append(
                _relative("fly reward, fresh engine", f"step {s + 1}", real["fly"][key][0], sim["fly"][key][0], 0.05)
            )
    for key, (mean, count, *_) in sorted(real["fly"].items(), key=lambda kv: tuple(map(int, kv[0].split(",")))):
        k, s = key.split(",")
        if count >= MIN_BIN and key in sim["fly"] and k != "0":
            scale = max(abs(mean), NEAR_ZERO)
            name = f"{k} repairs, step {int(s) + 1} after (n={count})"
            checks.append(_relative("fly reward by bin", name, mean, sim["fly"][key][0], 0.10, scale))
    for i, ((mean, count), sim_call) in enumerate(zip(real["calls"], sim["calls"], strict=False)):
        if count >= MIN_BIN:
            scale = max(abs(mean), NEAR_ZERO)
            tolerance = 0.05 if real["repair"] else NEVER_REPAIRED_CALL_TOLERANCE
            checks.append(
                _relative("per-call mean reward", f"call {i + 1} (n={count})", mean, sim_call[0], tolerance, scale)
            )
    for k, (mean, count) in sorted(real["repair"].items()):
        if count >= MIN_BIN and k in sim["repair"]:
            checks.append(_relative("repair step reward", f"repair {int(k) + 1}", mean, sim["repair"][k][0], 0.05))
    if real["repair_all"] and real["repair_all"][1] >= MIN_BIN and sim["repair_all"]:
        name = f"every repair step (n={real['repair_all'][1]})"
        checks.append(_relative("repair step reward", name, real["repair_all"][0], sim["repair_all"][0], 0.03))
    if real["failing_reward"] is not None and sim["failing_reward"] is not None:
        checks.append(
            _relative("episode end", "failing step reward", real["failing_reward"], sim["failing_reward"], 0.05)
        )
    if real["sale_reward"] is not None and sim["sale_reward"] is not None:
        checks.append(_relative("episode end", "sale reward", real["sale_reward"], sim["sale_reward"], 0.05))
    return checks


def _failure_checks(real: dict, sim: dict) -> list[Check]:
    """When engines fail: the median, the distribution, by age and by flights since the last repair."""
    checks = []
    rf, sf = real["failure_flights"], sim["failure_flights"]
    if len(rf) >= MIN_BIN and sf:
        share = [x["first_flight_failure"][1] / max(len(x["failure_flights"]), 1) for x in (real, sim)]
        checks.append(Check("episode end", "share of failures on a step's first flight", *share, "reported", None))
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
        if "failure_since_repair" in real:  # summaries shipped before it have no since-repair list
            checks += _timing_checks(real, sim)
        checks += _counts_table(
            "failures by engine age (share)", AGE_BINS, real["failures_by_age"], sim["failures_by_age"]
        )
        checks += _counts_table(
            "failures by flights since repair (share)",
            SINCE_BINS,
            real["failures_by_since_repair"],
            sim["failures_by_since_repair"],
        )
    return checks


def _life_checks(real: dict, sim: dict) -> list[Check]:
    """How long never-repaired engines live, and the rows a failing step returns."""
    checks = []
    rl, sl = real["never_repaired_life"], sim["never_repaired_life"]
    if len(rl) >= MIN_BIN and sl:
        checks.append(
            _relative("never-repaired life", "median failing flight", float(np.median(rl)), float(np.median(sl)), 0.05)
        )
        for q in (5, 95):
            r, s = float(np.percentile(rl, q)), float(np.percentile(sl, q))
            checks.append(Check("never-repaired life", f"{q}th percentile", r, s, "±8 flights", abs(s - r) <= 8))
        ks = ks_distance(rl, sl)
        checks.append(
            Check("never-repaired life", "KS distance, real to simulated", float("nan"), ks, "< 0.1", ks < 0.1)
        )
    if real["failing_step_rows"] and sim["failing_step_rows"] and sum(real["failing_step_rows"]) >= MIN_BIN:
        r, s = (np.array(x["failing_step_rows"]) for x in (real, sim))
        most = [int(np.nonzero(x)[0].max()) for x in (r, s)]
        checks.append(Check("failing step", "most rows returned", *map(float, most), "equal", most[0] == most[1]))
        means = [float((x * np.arange(len(x))).sum() / x.sum()) for x in (r, s)]
        checks.append(_relative("failing step", "mean rows returned", *means, 0.10))
    return checks


def _sensor_checks(real: dict, sim: dict) -> list[Check]:
    checks = []
    for i, name in enumerate(SENSOR_NAMES):
        checks.append(_relative("healthy row", name, real["healthy_row"][i], sim["healthy_row"][i], 0.01))
    for i, name in enumerate(SENSOR_NAMES):
        r, s = real["drift_per_step"][i], sim["drift_per_step"][i]
        if abs(r) * FRESH_STEPS > real["noise"][i]:  # drifts past its noise over a fresh engine's life
            checks.append(_relative("drift per step", name, r, s, 0.05))
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

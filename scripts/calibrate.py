"""Fit the challenge engine's constants (`SimParams`) to real episodes of the challenge's server.

    python scripts/calibrate.py ../shared/data/real_server

prints every fitted constant and how well it fits; `SimParams`' defaults are its output
(docs/simulator.md, "Calibration"). The fits, in order:

1. Economics, by linear least squares over every fly and repair step: the profit per flight
   falls linearly within a segment (from a reset or a repair), so a step's reward is linear in
   the segment's starting profit, its decline per flight, and the repair cost. The decline after
   a repair is a piecewise-linear function of the engine's age at that repair (knots below).
2. Reward noise: per-flight noise and per-segment spread of the decline, from how the residual
   variance grows along a segment.
3. Failure hazard per flight, exp(a - b * health), by maximum likelihood on every flight flown.
4. Sensors: level, DTAMB slope and health slope of each sensor by least squares, noise as the
   residual spread.
5. DTAMB: a clipped AR(1) that restarts at its floor on each step's first flight, matched to the
   mean of each position within a step (the 250-flight engine) and the spread of last rows.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from torch_student_env.fidelity.compare import compare, ks_distance, summarize
from torch_student_env.fidelity.data import load_episodes, step_contexts
from torch_student_env.fidelity.replay import continuations, replay
from torch_student_env.sim.params import REPAIR_AGE_KNOTS, SimParams
from torch_student_env.spec import Action

STEP = 10
AGE_KNOTS = REPAIR_AGE_KNOTS  # flights: where the data has repairs


def knot_weights(age: float) -> np.ndarray:
    """Interpolation weights of the decline after a repair at `age` over (fresh, *AGE_KNOTS)."""
    xs = np.array((0.0,) + AGE_KNOTS)
    w = np.zeros(len(xs))
    age = min(max(age, 0.0), xs[-1])
    i = min(int(np.searchsorted(xs, age, side="right")) - 1, len(xs) - 2)
    t = (age - xs[i]) / (xs[i + 1] - xs[i])
    w[i], w[i + 1] = 1 - t, t
    return w


def design(episodes):
    """Rows of the least-squares problem: reward = X @ theta, plus each row's segment position."""
    n_theta = 3 + len(AGE_KNOTS) + 1  # pi_new, pi_repair, sigma_fresh, sigma knots, repair cost
    X, y, where = [], [], []
    for ep in episodes:
        seg_start_w = np.zeros(n_theta)
        seg_sigma_w = np.zeros(n_theta)
        seg_start_w[0], seg_sigma_w[2] = 1.0, 1.0
        done = 0  # flights flown in the current segment
        for ctx, reward in zip(step_contexts(ep.actions), ep.rewards, strict=True):
            if ctx.action == Action.REPAIR:
                seg_start_w = np.zeros(n_theta)
                seg_start_w[1] = 1.0
                seg_sigma_w = np.zeros(n_theta)
                seg_sigma_w[2 : 3 + len(AGE_KNOTS)] = knot_weights(ctx.age)
                done = 0
            if ctx.terminal or ctx.action == Action.SELL:
                break
            row = STEP * seg_start_w - (STEP * done + STEP * (STEP + 1) / 2) * seg_sigma_w
            if ctx.action == Action.REPAIR:
                row[-1] = -1.0
            X.append(row), y.append(reward), where.append((done, ctx))
            done += STEP
    return np.array(X), np.array(y), where


def fit_economics(episodes):
    X, y, where = design(episodes)
    # Bins where over 5 % of the engines that started the segment have already failed hold only
    # the survivors, the slower-wearing engines: they would bias the decline low. The replay,
    # which fails engines the same way, is what checks those bins.
    count = Counter((ctx.repairs_before, ctx.since_repair, ctx.action) for _, ctx in where)
    keep = np.array(
        [
            count[(c.repairs_before, c.since_repair, c.action)] >= 0.95 * count[(c.repairs_before, 0, c.action)]
            or c.action == Action.REPAIR
            for _, c in where
        ]
    )
    X, y, where = X[keep], y[keep], [w for w, k in zip(where, keep, strict=True) if k]
    theta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ theta
    fly = np.array([ctx.action == Action.DO_NOTHING for _, ctx in where])
    # Noise: var(resid) = 10 s_e^2 + (tau * decline * flights-weighted position)^2 on fly steps.
    position = np.array([d for d, _ in where]) * STEP + STEP * (STEP + 1) / 2
    decline = X[:, 2 : 3 + len(AGE_KNOTS)] @ theta[2 : 3 + len(AGE_KNOTS)] / -position
    bins = {}
    for r, p, s, f in zip(resid, position, decline, fly, strict=True):
        if f:
            bins.setdefault(p, []).append((r, s))
    A, b = [], []
    for p, vals in bins.items():
        if len(vals) >= 30:
            r = np.array(vals)
            A.append([STEP, np.mean((r[:, 1] * p) ** 2)]), b.append(np.var(r[:, 0]))
    (noise_var, tau_var), *_ = np.linalg.lstsq(np.array(A), np.array(b), rcond=None)
    return theta, math.sqrt(max(noise_var, 0)), math.sqrt(max(tau_var, 0)), float(np.std(resid[fly]))


def health_paths(episodes, theta):
    """Per episode: the deterministic health of every flight flown, and the failing flight's index."""
    pi_new, pi_rep, sigma0 = theta[0], theta[1], theta[2]
    knots = theta[2 : 3 + len(AGE_KNOTS)]
    paths = []
    for ep in episodes:
        profit, decline, health, fail_at = pi_new, sigma0, [], None
        failure = ep.failure_flight()
        for ctx in step_contexts(ep.actions):
            if ctx.action == Action.SELL:
                break
            if ctx.action == Action.REPAIR:
                decline = float(knot_weights(ctx.age) @ knots)
                profit = pi_rep
            for j in range(STEP):
                profit -= decline
                health.append(profit / pi_rep)
                if failure is not None and ctx.age + j + 1 == failure:
                    fail_at = len(health) - 1
                    break
            if fail_at is not None:
                break
        paths.append((np.array(health), fail_at))
    return paths


def fit_hazard(paths):
    """Maximum likelihood of a per-flight hazard exp(a - b * health)."""
    flown = torch.tensor(np.concatenate([h if f is None else h[:f] for h, f in paths]), dtype=torch.float64)
    failed = torch.tensor([h[f] for h, f in paths if f is not None], dtype=torch.float64)
    ab = torch.tensor([-4.0, 9.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200, line_search_fn="strong_wolfe")

    def nll():
        opt.zero_grad()
        a, b = ab
        loss = torch.exp(a - b * flown).sum() - torch.log(-torch.expm1(-torch.exp(a - b * failed))).sum()
        loss.backward()
        return loss

    opt.step(nll)
    return [float(v) for v in ab.detach()]


def fit_sensors(episodes, paths):
    """Per sensor: level at health 1 and DTAMB 10, slope per K of DTAMB, per unit health and per unit
    health squared (wear shows faster as health falls), noise."""
    rows, health = [], []
    for ep, (h, _fail_at) in zip(episodes, paths, strict=True):
        for ctx, row in zip(step_contexts(ep.actions), ep.rows, strict=True):
            if ctx.terminal:
                break
            last = (ctx.age + STEP) - 1  # index of the step's last flight in `h`
            rows.append(row), health.append(h[last])
    rows, health = np.array(rows), np.array(health)
    A = np.stack([np.ones(len(rows)), rows[:, 8] - 10.0, health - 1.0, (health - 1.0) ** 2], 1)
    fits = []
    for i in range(7):
        coef, *_ = np.linalg.lstsq(A, rows[:, i], rcond=None)
        fits.append((*coef, float(np.std(rows[:, i] - A @ coef))))
    return fits


def fit_dtamb(single_csv: Path, episodes, floor=9.1, ceiling=10.9):
    """mean, persistence and innovation spread of the per-step clipped AR(1), by a grid search."""
    with open(single_csv) as handle:
        dt = np.array([float(r["DTAMB"]) for r in csv.DictReader(handle)])
    by_position = dt.reshape(-1, STEP).mean(0)
    last = np.array([row[8] for ep in episodes for row in ep.rows])
    target = np.concatenate([by_position[1:], [last.mean(), last.std(), np.mean(last <= floor + 1e-3)]])
    # The last-row figures pool 14,000 rows, each position mean 25: weigh them by that precision.
    weight = np.array([1.0] * (STEP - 1) + [25.0] * 3)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((20000, STEP))
    best = None
    for mu in np.arange(9.70, 10.20, 0.02):
        for phi in np.arange(0.70, 0.96, 0.02):
            for s in np.arange(0.10, 0.30, 0.01):
                x = np.full(20000, floor)
                out = [x]
                for j in range(1, STEP):
                    x = mu + phi * (x - mu) + s * eps[:, j]
                    out.append(x)
                d = np.clip(np.stack(out, 1), floor, ceiling)
                got = np.concatenate([d.mean(0)[1:], [d[:, -1].mean(), d[:, -1].std(), np.mean(d[:, -1] <= floor)]])
                err = np.sum(weight * (got - target) ** 2)
                if best is None or err < best[0]:
                    best = (err, mu, phi, s, got)
    return best, target


def refine_by_replay(episodes, params: SimParams, seeds: int = 4) -> SimParams:
    """Hazard and the spread of the wear rate after a repair, by replaying the logged episodes.

    The likelihood fit sees each engine's health only through the deterministic curve, which
    blurs it (engines wear at different rates) and flattens the hazard. The replay fails
    simulated engines under the logged actions: pick the grid point whose failure flights are
    closest (Kolmogorov-Smirnov) to the real ones, with the fewest missed reward bins.
    """
    actions = continuations([ep.actions for ep in episodes])
    real = summarize(episodes)
    best = None
    for a in np.arange(-6.6, -3.5, 0.4):
        for b in (params.hazard_health_slope, 14.0, 18.0, 22.0, 26.0):
            for spread in (0.04, 0.08, 0.12):
                trial = replace(
                    params,
                    hazard_log_at_zero=round(float(a), 2),
                    hazard_health_slope=float(b),
                    wear_spread_repair=spread,
                )
                sim = summarize([run for runs in replay(actions, seeds=seeds, params=trial) for run in runs])
                missed = sum(c.passed is False for c in compare(real, sim))
                score = (ks_distance(real["failure_flights"], sim["failure_flights"]) + 0.02 * missed, trial)
                if best is None or score[0] < best[0]:
                    best = score
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data", type=Path, help="folder with exploration_episodes.jsonl and single_engine_250_flights.csv"
    )
    args = parser.parse_args()
    episodes = load_episodes(args.data / "exploration_episodes.jsonl")
    theta, noise, tau, resid_std = fit_economics(episodes)
    pi_new, pi_rep, decline_new = theta[:3]
    print(
        f"== economics: step residual std {resid_std:.1f}; per-flight noise {noise:.2f} (with misfit), "
        f"decline spread {tau:.3f}"
    )
    paths = health_paths(episodes, theta)
    a, b = fit_hazard(paths)
    print(f"== hazard by maximum likelihood: exp({a:.3f} - {b:.3f} * health)")
    sensors = fit_sensors(episodes, paths)
    (err, mu, phi, s, got), target = fit_dtamb(args.data / "single_engine_250_flights.csv", episodes)
    print(f"== DTAMB fit, target {np.round(target, 3)}\n              got    {np.round(got, 3)}")
    params = replace(
        SimParams(),
        profit_per_flight=round(float(pi_rep), 3),
        repair_cost=round(float(theta[-1]), 2),
        health_new=round(float(pi_new / pi_rep), 5),
        wear_rate_new=round(float(decline_new / pi_rep), 6),
        wear_rate_after_repair=tuple(round(float(v / pi_rep), 6) for v in theta[3:-1]),
        hazard_log_at_zero=round(a, 3),
        hazard_health_slope=round(b, 3),
        sensor_level=tuple(float(f"{f[0]:.7g}") for f in sensors),
        sensor_per_dtamb=tuple(float(f"{f[1]:.5g}") for f in sensors),
        sensor_per_health=tuple(float(f"{f[2]:.5g}") for f in sensors),
        sensor_per_health_sq=tuple(float(f"{f[3]:.5g}") for f in sensors),
        dtamb_mean=round(float(mu), 2),
        dtamb_persistence=round(float(phi), 2),
        dtamb_innovation_std=round(float(s), 2),
    )
    params = refine_by_replay(episodes, params)
    print("== fitted SimParams (profit noise, wear spread of fresh engines, sensor noise: docs/simulator.md)")
    for field in fields(SimParams):
        print(f"    {field.name} = {getattr(params, field.name)!r}")


if __name__ == "__main__":
    main()

"""Plausible models: `SimParams` variants that the real logs cannot tell apart from the default.

The logs cover engines up to about 360 flights, up to 6 repairs, repairs about 60 flights
apart (docs/simulator.md, "Where the data ends"). Past that the default model extrapolates in
the simplest way; each variant here extrapolates in another way the data allows, or takes the
structure that fitted almost as well. A policy that is good on all of them does not rely on an
extrapolation. Use them for

- evaluation on each: `python -m torch_student_env.evaluate --variants plausible`;
- domain randomisation: `make_env(sim_variants="plausible")` draws one per episode, from
  (seed, env, episode) alone, on the eager and the compiled path.

Every variant differs from the default only in `VARIANT_FIELDS`; `scripts/calibrate.py` prints
how each was fitted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch_student_env.sim.params import SimParams

_DEFAULT = SimParams()

PLAUSIBLE: dict[str, SimParams] = {
    # The fitted model: a repair restores a safety margin; flat extrapolation everywhere.
    "fitted": _DEFAULT,
    # The wear rate after a repair keeps rising past 360 flights, at its mean rise over
    # 60-360 flights, instead of staying at the last knot's.
    "wear_keeps_rising": replace(_DEFAULT, wear_rate_rise_past_knots=4.2e-5),
    # The safety margin of a repair fades past the 6 repairs the logs hold: a fifth per repair,
    # gone at the 11th.
    "margin_fades": replace(_DEFAULT, margin_loss_per_repair=0.2),
    # Old engines fail whatever their health: a failure rate that grows with age past 360
    # flights, set so that an engine repaired at every step fails by flight 493 half the time
    # (one such engine on the real server did; the logs hold none).
    "old_engines_fail": replace(_DEFAULT, age_hazard_per_flight=7.8e-5),
    # The runner-up structure: safety leads health by a number of flights of wear (a fast-wearing
    # engine, as after a late repair, fails at a lower health) instead of a repair margin.
    "lagged_safety": replace(
        _DEFAULT,
        repair_safety_margin=0.0,
        failure_lag_flights=14.2,
        hazard_log_at_zero=0.841,
        hazard_health_slope=15.3,
        hazard_floor_new=1.762e-4,
        hazard_max_per_flight=0.1413,
    ),
}

ENSEMBLES: dict[str, dict[str, SimParams]] = {"plausible": PLAUSIBLE}


def resolve(spec: str | Mapping[str, SimParams] | Sequence[SimParams]) -> dict[str, SimParams]:
    """Named variants from an ensemble name, one variant's name, a mapping or a sequence."""
    if isinstance(spec, str):
        if spec in ENSEMBLES:
            return dict(ENSEMBLES[spec])
        if spec in PLAUSIBLE:
            return {spec: PLAUSIBLE[spec]}
        raise ValueError(f"unknown sim variants {spec!r}: use one of {sorted(ENSEMBLES) + sorted(PLAUSIBLE)}")
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, Sequence):
        return {f"variant {i}": params for i, params in enumerate(spec)}
    raise TypeError(f"sim variants must be a name, a mapping or a sequence of SimParams, got {type(spec).__name__}")

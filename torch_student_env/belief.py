"""What a player can know of an engine's hidden state, and the plans played at it: health read
from the wear sensors (`sensor_health`), the Bayesian estimate of (health, wear rate) from the
rows and the player-side counters (`estimate_state`), the oracle's plan at the segment's mean
rate (`CounterSchedulePolicy`) and at that estimate (`BeliefPolicy`, the reachable ceiling).

A module of its own so that the networks (`models`, which can read the belief plan) need none of
the baseline registry (`policies`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from torch_student_env.oracle import OraclePolicy, segment_base_rate
from torch_student_env.sim.engine import SimTables
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE, DTAMB_COLUMN, SENSOR_NAMES

WEAR_SENSORS = ("HP_Nmech", "HPC_Tout", "HPC_Pout_st")  # the sensors that show wear


def sensor_health_rows(td: TensorDict, params: SimParams | None = None) -> tuple[torch.Tensor, float]:
    """Health read from the wear sensors, per window row (N, W), and its noise (std per row).

    Each wear sensor, less its DTAMB term, is turned into health with the model's linear
    response (an operator knows it from the engine's pass-off test), and the three estimates are
    averaged with inverse-variance weights: about 0.05 of noise per row.
    """
    p = params or SimParams()
    obs = td["observation"]
    estimate = torch.zeros(obs.shape[:-1], dtype=obs.dtype, device=obs.device)
    total_weight = 0.0
    for name in WEAR_SENSORS:
        i = SENSOR_NAMES.index(name)
        slope = p.sensor_per_health[i]
        level = obs[..., i] - p.sensor_level[i] - p.sensor_per_dtamb[i] * (obs[..., DTAMB_COLUMN] - p.dtamb_reference)
        noise = (p.sensor_noise_std[i] ** 2 + (p.sensor_per_dtamb[i] * p.hidden_dtamb_std) ** 2) ** 0.5
        weight = (slope / noise) ** 2
        estimate = estimate + weight * (1.0 + level / slope)
        total_weight += weight
    return estimate / total_weight, total_weight**-0.5


def sensor_health(td: TensorDict, params: SimParams | None = None, rows: int | None = None) -> torch.Tensor:
    """`sensor_health_rows` averaged over the window's valid rows (N,): the window averages the noise.

    `rows` reads only the window's newest rows (None: all). With the player-side counters in
    `td`, a repaired engine's rows from before its last repair are left out: a window longer than
    a step would otherwise average two engine lives.
    """
    health, _ = sensor_health_rows(td, params)
    valid, flight = td["valid"], td["flight"]
    if rows is not None:
        health, valid, flight = health[:, -rows:], valid[:, -rows:], flight[:, -rows:]
    weights = valid
    if "since_repair" in td.keys():
        repaired_at = (td["age"] - td["since_repair"]).unsqueeze(1)
        weights = weights & ((td["repairs"] == 0).unsqueeze(1) | (flight > repaired_at))
    weights = weights.to(health.dtype)
    return (health * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def estimate_state(
    td: TensorDict, params: SimParams, tables: SimTables, with_spread: bool = False
) -> tuple[torch.Tensor, ...]:
    """(health, wear rate) (N,) of each engine, from what a player knows: the window's rows and the
    player-side counters (see `BeliefPolicy`). `tables` are `params`' `SimTables` (only their
    plain-float constants are read, so any device's td works, with no host sync). With `with_spread`,
    also the wear rate's posterior standard deviation (health follows it: 1 - rate x since)."""
    p = params
    age, since, repairs = td["age"], td["since_repair"], td["repairs"]
    dtype = td["observation"].dtype
    repaired = repairs > 0
    start = (age - since).to(dtype)  # the flight of the last repair (0: the episode's start)
    prior = segment_base_rate(start, repaired, tables).to(dtype)  # any device
    spread = torch.where(repaired, p.wear_spread_repair, p.wear_spread_new)
    start_health = torch.where(repaired, 1.0, p.health_new).to(dtype)
    rows, row_noise = sensor_health_rows(td, p)  # (N, W), per-row noise std
    flight = td["flight"].to(dtype)
    segment = (td["valid"] & (flight > start.unsqueeze(1))).to(dtype)  # rows since the last repair
    n = segment.sum(1)
    elapsed = ((flight - start.unsqueeze(1)) * segment).sum(1) / n.clamp(min=1.0)  # mean flights since
    measured = (start_health - (rows * segment).sum(1) / n.clamp(min=1.0)) / elapsed.clamp(min=1.0)
    var_measured = row_noise**2 / n.clamp(min=1.0) / elapsed.clamp(min=1.0) ** 2
    var_prior = (prior * spread) ** 2
    gain = torch.where(n > 0, var_prior / (var_prior + var_measured), 0.0)
    rate = (prior + gain * (measured - prior)).clamp(min=1e-4)
    health = start_health - rate * since.to(dtype)
    return (health, rate, ((1 - gain) * var_prior).sqrt()) if with_spread else (health, rate)


class CounterSchedulePolicy:
    """The oracle's plan played at the segment's mean wear rate (`oracle.segment_base_rate`):
    a function of the player-side counters alone, never of the rows. On the fitted model it is
    level with `belief` (README, "Baselines"): what a learned policy needs is this schedule, and
    the sensors add nothing measurable to it. Not a `BASELINES` entry: it plans on the model,
    so it is not a rule, and `belief` is already the reference for what a player can reach.
    `BeliefPolicy` plays the same plan at a rate refined by the rows (`rate`)."""

    def __init__(
        self,
        params: SimParams | None = None,
        step_size: int = CLIENT_STEP_SIZE,
        max_flights: int = CLIENT_STEPS_PER_EPISODE,
    ) -> None:
        self.params = params or SimParams()
        self.oracle = OraclePolicy(self.params, step_size, max_flights)
        self._tables = SimTables(self.params, torch.device("cpu"))

    def rate(self, td: TensorDict) -> torch.Tensor:
        """The wear rate (N,) the plan is played at: the segment's mean, from the counters."""
        age, since = td["age"], td["since_repair"]
        return segment_base_rate((age - since).double(), td["repairs"] > 0, self._tables)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        return self.oracle.act(td["age"], td["repairs"], td["since_repair"], self.rate(td))


class BeliefPolicy(CounterSchedulePolicy):
    """The oracle's plan, played at a state estimated from what a player can know: the sensor rows
    and the player-side counters (`age`, `since_repair`, `repairs`), never the hidden state.

    The estimate is a Bayesian update of the wear rate, the one unknown that matters: a repair
    at age a draws a rate around the model's `wear_rate_after_repair(a)` (relative spread
    `wear_spread_repair`), a fresh engine around `wear_rate_new`, and health then falls linearly
    from 1 (`health_new`) over the `since_repair` flights since. The sensor-read health of the
    window's rows since the last repair measures that slope; prior and measurement are combined
    with their variances. Health is then known to the precision of the rate. The gap between
    the privileged oracle and this policy is the price of information.
    """

    def estimate(self, td: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
        """(health, wear rate) (N,) estimated from the rows and the player-side counters."""
        return estimate_state(td, self.params, self._tables)

    def rate(self, td: TensorDict) -> torch.Tensor:
        """The wear rate (N,) the plan is played at: the estimate from the rows and the counters."""
        return self.estimate(td)[1]

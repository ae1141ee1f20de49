"""Engine state and the kernels of the embedded challenge engine: `reset_engines` and `advance`.

Both are pure functions of (state, inputs, constants) that return a new state, batched over N
engines and over the K flights of a step with closed-form maths: no Python loop over engines,
no host synchronisation, any device. The model and its calibration are in docs/simulator.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import torch

from torch_student_env.sim import rng
from torch_student_env.sim.params import DATA_LAST_AGE, DATA_LAST_REPAIRS, REPAIR_AGE_KNOTS, VARIANT_FIELDS, SimParams
from torch_student_env.spec import NUM_SENSORS, Action, Phase
from torch_student_env.types import Transition

# Salts that keep the engine-level and repair draws apart from the per-flight draws, which are
# keyed by flight index (< 2**31, so never equal to a salt >= 2**31).
_ENGINE_SALT = 0xE7A1_5A17
_REPAIR_STREAM = 0xB5EE_D007  # both folded as their low 32 bits
_ROW_DRAWS = 6  # hashes per flight row: 5 x 2 normals (7 sensors, profit, DTAMB, hidden DTAMB), 1 hazard
# Plain ints: under torch.compile, `tensor == Action.SELL` (an IntEnum) silently compares False.
_SELL, _REPAIR = int(Action.SELL), int(Action.REPAIR)
_CRUISE = float(Phase.CRUISE)  # the challenge's server flies cruise only


@dataclass(frozen=True)
class EngineState:
    """Everything that changes, per engine. Shapes for N engines.

    Engines are the last (innermost) dimension of every tensor of the simulator, so elementwise
    code runs along N in whole SIMD vectors (CPU) or coalesced warps (GPU), and a per-engine mask
    of shape (N,) broadcasts against any per-flight (K, N) block.
    """

    episode_key: torch.Tensor  # (N,) int32, hash of (seed, env, episode): roots every draw
    health: torch.Tensor  # (N,) float32, after the last flight flown: 1 just repaired, ~0 failing
    wear_rate: torch.Tensor  # (N,) float32, health lost per flight until the next repair
    safety: torch.Tensor  # (N,) float32, the health that failures see: restored with health
    safety_rate: torch.Tensor  # (N,) float32, safety lost per flight (`SimParams.safety_wear_share`)
    flights: torch.Tensor  # (N,) int64, flights flown in this episode
    repairs: torch.Tensor  # (N,) int64, repairs done in this episode
    variant: torch.Tensor  # (N,) int64, which model of the env's ensemble this episode runs (0 for one)

    def where(self, mask: torch.Tensor, other: EngineState) -> EngineState:
        """Per engine, this state where `mask` (N,) is True, else `other` (no boolean indexing)."""
        return EngineState(
            **{f.name: torch.where(mask, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        )


class Dynamics(NamedTuple):
    """The `VARIANT_FIELDS` of each engine's model: floats for one model, (N,) tensors for an
    ensemble (each engine's episode runs the variant it drew at its reset)."""

    hazard_log_at_zero: float | torch.Tensor
    hazard_health_slope: float | torch.Tensor
    repair_safety_margin: float | torch.Tensor
    hazard_floor_new: float | torch.Tensor
    hazard_max_per_flight: float | torch.Tensor
    margin_loss_per_repair: float | torch.Tensor
    age_hazard_per_flight: float | torch.Tensor
    wear_rate_rise_past_knots: float | torch.Tensor
    failure_lag_flights: float | torch.Tensor


assert Dynamics._fields == VARIANT_FIELDS, "Dynamics must list sim.params.VARIANT_FIELDS in order"


def check_variants(variants: Sequence[SimParams]) -> tuple[SimParams, ...]:
    """The variants as a tuple, checked: at least one, all `SimParams`, and equal outside
    `VARIANT_FIELDS` (those are what the data identifies; an ensemble shares them)."""
    variants = tuple(variants)
    if not variants or not all(isinstance(v, SimParams) for v in variants):
        raise TypeError(f"sim variants must be a non-empty sequence of SimParams, got {variants!r}")
    for field in fields(SimParams):
        if field.name not in VARIANT_FIELDS:
            values = {getattr(v, field.name) for v in variants}
            if len(values) > 1:
                raise ValueError(
                    f"sim variants may differ only in {VARIANT_FIELDS}; they differ in {field.name}: {sorted(values)}"
                )
    return variants


class SimTables:
    """The constants of `SimParams` (one, or an ensemble of variants) as tensors on one device,
    built once per env.

    Per-sensor tables are shaped (7, 1, 1) so that they broadcast against the simulator's
    channel-first (7, K, N) sensor blocks.
    """

    def __init__(self, params: SimParams | Sequence[SimParams], device: torch.device) -> None:
        def per_sensor(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(NUM_SENSORS, 1, 1)

        self.variants = check_variants((params,) if isinstance(params, SimParams) else params)
        self.num_variants = len(self.variants)
        params = self.params = self.variants[0]
        # (fields, variants): an engine's column is gathered by its variant index each step.
        self.variant_table = (
            torch.tensor([[getattr(v, f) for v in self.variants] for f in VARIANT_FIELDS], device=device)
            if self.num_variants > 1
            else None
        )
        self.sensor_level = per_sensor(params.sensor_level)
        self.sensor_per_dtamb = per_sensor(params.sensor_per_dtamb)
        self.sensor_per_health = per_sensor(params.sensor_per_health)
        self.sensor_per_health_sq = per_sensor(params.sensor_per_health_sq)
        self.sensor_noise_std = per_sensor(params.sensor_noise_std)
        # Piecewise-linear wear rate after a repair, as hinge terms in plain floats: elementwise
        # code that fuses, instead of a searchsorted + gather.
        ages = (0.0,) + REPAIR_AGE_KNOTS
        rates = (params.wear_rate_new,) + params.wear_rate_after_repair
        self.repair_wear_hinges = tuple(
            (ages[i], ages[i + 1] - ages[i], (rates[i + 1] - rates[i]) / (ages[i + 1] - ages[i]))
            for i in range(len(ages) - 1)
        )

    def dynamics(self, variant: torch.Tensor) -> Dynamics:
        """Each engine's `Dynamics` for its `variant` (N,): plain floats when there is one model."""
        if self.variant_table is None:
            return Dynamics(*(getattr(self.params, f) for f in VARIANT_FIELDS))
        return Dynamics(*self.variant_table[:, variant].unbind(0))


def _used(coefficient: float | torch.Tensor) -> bool:
    """Whether a term with this coefficient can matter: a plain 0.0 (or inf, for a cap) leaves it
    out of the graph."""
    return not (isinstance(coefficient, float) and coefficient in (0.0, math.inf))


def failure_rate(
    safety: torch.Tensor, safety_rate: torch.Tensor, flight: torch.Tensor, repairs: torch.Tensor, d: Dynamics
) -> torch.Tensor:
    """Failure rate per flight (continuous time: a flight fails with probability 1 - exp(-rate)).

    `safety` of the flight (`EngineState.safety`: health as failures see it), the engine's
    `safety_rate`, the `flight` index (age) and `repairs` done, broadcastable to each other; `d`
    from `SimTables.dynamics`. The one definition of failure, shared by the simulator, the
    calibration and the oracle. docs/simulator.md, "Failures".
    """
    level = safety
    if _used(d.repair_safety_margin):
        margin = d.repair_safety_margin * (repairs > 0)
        if _used(d.margin_loss_per_repair):
            past = (repairs - DATA_LAST_REPAIRS).clamp(min=0).to(safety.dtype)
            margin = margin * (1.0 - d.margin_loss_per_repair * past).clamp(min=0.0)
        level = level + margin
    if _used(d.failure_lag_flights):
        level = level + d.failure_lag_flights * safety_rate
    rate = torch.exp(d.hazard_log_at_zero - d.hazard_health_slope * level)
    if _used(d.hazard_max_per_flight):
        rate = rate / (1.0 + rate / d.hazard_max_per_flight)
    if _used(d.hazard_floor_new):
        rate = rate + d.hazard_floor_new * (repairs == 0)
    if _used(d.age_hazard_per_flight):
        rate = rate + d.age_hazard_per_flight * (flight.to(safety.dtype) - DATA_LAST_AGE).clamp(min=0.0)
    return rate


def profit_share(health: torch.Tensor, params: SimParams) -> torch.Tensor:
    """A flight's mean profit as a share of `profit_per_flight`, at its `health`: health itself,
    flattened below `profit_knee_health` (docs/simulator.md, "Rewards"). The one definition, for
    the simulator and the oracle."""
    if params.profit_flattening == 0.0:
        return health
    return health + params.profit_flattening * (params.profit_knee_health - health).clamp(min=0.0) ** 2


def none_of(mask: torch.Tensor) -> bool:
    """Whether `mask` is all False, where knowing it is free: an eager step on CPU; else False.

    Work that only matters where a mask is True (repairs, restarts) is computed for all N and
    selected with `where`, which keeps a step sync-free on an accelerator and one graph when
    compiled. On CPU, reading the flag back costs nothing, and a small eager step is a few
    hundred ops of ~2 us each, so it skips that work when no engine needs it. Same results.
    """
    return mask.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(mask.any())


def wear_rate_after_repair(
    age: torch.Tensor, tables: SimTables, rise_past_knots: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Health lost per flight after a repair at `age` flights (before the engine's own spread).

    Interpolated over `REPAIR_AGE_KNOTS`; past the last knot it stays flat, plus
    `rise_past_knots` per flight of age (a variant's extrapolation).
    """
    dtype = age.dtype if age.is_floating_point() else torch.float32
    age = age.to(dtype)
    rate = torch.full_like(age, tables.params.wear_rate_new)
    for start, span, slope in tables.repair_wear_hinges:
        rate = rate + slope * (age - start).clamp(0.0, span)
    if _used(rise_past_knots):
        rate = rate + rise_past_knots * (age - REPAIR_AGE_KNOTS[-1]).clamp(min=0.0)
    return rate


def _lognormal_factor(z: torch.Tensor, spread: float) -> torch.Tensor:
    """exp(spread * z) with mean 1 for a standard normal z."""
    return torch.exp(spread * z - 0.5 * spread * spread)


def _wear_rates(
    base_rate: torch.Tensor | float, z: torch.Tensor, spread: float, share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(wear rate, safety rate) of a segment whose mean wear rate is `base_rate`, for standard
    normals `z`: the wear rate carries the engine's lognormal spread factor, the safety rate that
    factor to the power `share` (`SimParams.safety_wear_share`)."""
    factor = _lognormal_factor(z, spread)
    wear_rate = base_rate * factor
    if share == 1.0:
        return wear_rate, wear_rate
    if share == 0.0:
        return wear_rate, torch.zeros_like(wear_rate) + base_rate
    return wear_rate, base_rate * factor**share


def dtamb_within_step(innovations: torch.Tensor, params: SimParams) -> tuple[torch.Tensor, torch.Tensor]:
    """DTAMB (K, N) of a step's K flights from standard normals (K, N), and the (K, N) bool mask
    of the step's first flight (whose innovation is unused).

    The deviation from the mean starts at floor - mean on the step's first flight and follows
    d_j = persistence * d_{j-1} + innovation_std * z_j. The recursion is summed in closed form by
    a doubling scan (ceil(log2 K) shifted adds, in a fixed order, so engine i's values never
    depend on how many engines run beside it), then clipped to [floor, ceiling].
    """
    p = params
    k = innovations.shape[0]
    first = torch.arange(k, device=innovations.device).unsqueeze(1) == 0
    dev = torch.where(first, p.dtamb_floor - p.dtamb_mean, p.dtamb_innovation_std * innovations)
    shift = 1
    while shift < k:
        shifted = torch.cat((torch.zeros_like(dev[:shift]), dev[:-shift]), dim=0)
        dev = dev + (p.dtamb_persistence**shift) * shifted
        shift *= 2
    return (p.dtamb_mean + dev).clamp(p.dtamb_floor, p.dtamb_ceiling), first


def sum_over_flights(x: torch.Tensor) -> torch.Tensor:
    """Sum (K, N) over K by a fixed pairwise tree of elementwise adds.

    `x.sum(dim=0)` picks its accumulation order by N (vector width, threads), so an engine's
    float sum would change in its last bit with the number of engines beside it; elementwise
    adds in a fixed tree do not: shards of a run then equal one big env bit for bit.
    """
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = torch.cat((x, torch.zeros_like(x[:1])), dim=0)
        x = x[0::2] + x[1::2]
    return x[0]


@dataclass(frozen=True)
class _Rows:
    """Per-flight quantities of a step, (K, N) each, besides the rows themselves."""

    rows: torch.Tensor  # (N, K, 10) view of (10, K, N) memory
    profit_noise: torch.Tensor  # (K, N) standard normals
    hazard_draw: torch.Tensor  # (K, N) uniforms in (0, 1)


def _flight_rows(key: torch.Tensor, flight: torch.Tensor, health: torch.Tensor, tables: SimTables) -> _Rows:
    """The rows of K flights at the given per-flight `health` (K, N), flights `flight` (K, N).

    Every draw is a hash of (episode key, flight index), so a flight's noise is the same whatever
    step it falls in. Channel-first (10, K, N) blocks keep the long engine dimension innermost.
    """
    bits = rng.stream_bits(rng.fold(key, flight), _ROW_DRAWS)  # (6, K, N)
    normals = torch.cat(rng.normal_pair(bits[:5]), dim=0)  # (10, K, N)
    p = tables.params
    dtamb, first = dtamb_within_step(normals[8], p)
    seen_dtamb = torch.where(first, dtamb, dtamb + p.hidden_dtamb_std * normals[9])
    wear = health - 1.0
    sensors = (
        tables.sensor_level
        + tables.sensor_per_dtamb * (seen_dtamb - p.dtamb_reference)
        + (tables.sensor_per_health + tables.sensor_per_health_sq * wear) * wear
        + tables.sensor_noise_std * normals[:NUM_SENSORS]
    )
    phase = torch.full_like(dtamb, _CRUISE)
    rows = torch.cat((sensors, phase.unsqueeze(0), dtamb.unsqueeze(0), health.unsqueeze(0)), dim=0)
    return _Rows(rows=rows.permute(2, 1, 0), profit_noise=normals[7], hazard_draw=rng.uniform24(bits[5]))


def reset_engines(episode_key: torch.Tensor, tables: SimTables) -> tuple[EngineState, torch.Tensor]:
    """Fresh engines for the given episode keys, and each engine's first row (flight 0).

    Returns `(state, first_row)` with `first_row` of shape (N, 10). Callers that reset a subset
    merge with `EngineState.where`; computing all N and selecting keeps the kernel sync-free.
    """
    p = tables.params
    draws = 1 if tables.num_variants == 1 else 2  # the second draw picks the episode's variant
    engine_bits = rng.stream_bits(rng.fold(episode_key, _ENGINE_SALT), draws)  # (draws, N)
    spread_z, _ = rng.normal_pair(engine_bits[0])
    if draws == 1:
        variant = torch.zeros_like(episode_key, dtype=torch.int64)
    else:  # uniform over the ensemble, from (seed, env, episode) alone
        variant = (rng.uniform24(engine_bits[1]) * tables.num_variants).long().clamp(max=tables.num_variants - 1)
    wear_rate, safety_rate = _wear_rates(p.wear_rate_new, spread_z, p.wear_spread_new, p.safety_wear_share)
    state = EngineState(
        episode_key=episode_key,
        health=torch.full_like(spread_z, p.health_new),
        wear_rate=wear_rate,
        safety=torch.full_like(spread_z, p.health_new),
        safety_rate=safety_rate,
        # Two tensors, not one shared: torch.compile guards on aliasing, and a state whose fields
        # alias only after a reset would compile the step twice.
        flights=torch.zeros_like(episode_key, dtype=torch.int64),
        repairs=torch.zeros_like(episode_key, dtype=torch.int64),
        variant=variant,
    )
    first = _flight_rows(episode_key, state.flights.unsqueeze(0), state.health.unsqueeze(0), tables)
    return state, first.rows[:, 0]


def advance(
    state: EngineState,
    actions: torch.Tensor,
    active: torch.Tensor,
    step_size: int,
    max_flights: int,
    tables: SimTables,
) -> tuple[EngineState, Transition]:
    """Apply each engine's action, then fly up to `step_size` flights; returns (new state, transition).

    `actions` (N,) int64 in {0, 1, 2}; `active` (N,) bool: inactive engines (finished, awaiting a
    reset) neither act nor fly and earn nothing. As on the challenge's server:
    - a repair is paid before the step's flights, sets health to 1 and draws a new wear rate,
      faster the older the engine; the repair step flies and earns its flights;
    - a sale is worth `sale_reward`, flies one flight (its row is returned) and ends the episode;
    - a failure ends the episode: the rows of the flights before the failing one are returned
      (the failing flight counts as flown but has no row), and the step's whole reward is
      `failure_reward`, except on the step's first flight: no row and `first_flight_failure_reward`;
    - the episode is truncated when it reaches `max_flights`.
    """
    p = tables.params
    d = tables.dynamics(state.variant)
    sell = active & (actions == _SELL)
    repair = active & (actions == _REPAIR)

    if not none_of(repair):
        repair_bits = rng.stream_bits(rng.fold(rng.fold(state.episode_key, state.flights), _REPAIR_STREAM), 1)
        spread_z, _ = rng.normal_pair(repair_bits[0])
        base_rate = wear_rate_after_repair(state.flights, tables, d.wear_rate_rise_past_knots)
        new_rate, new_safety_rate = _wear_rates(base_rate, spread_z, p.wear_spread_repair, p.safety_wear_share)
        state = replace(
            state,
            health=torch.where(repair, 1.0, state.health),
            wear_rate=torch.where(repair, new_rate, state.wear_rate),
            safety=torch.where(repair, 1.0, state.safety),
            safety_rate=torch.where(repair, new_safety_rate, state.safety_rate),
            repairs=state.repairs + repair.long(),
        )

    # Per-flight quantities are (K, N), engines innermost.
    room = (max_flights - state.flights).clamp(min=0)
    budget = torch.where(active, torch.where(sell, 1, step_size).clamp(max=room), 0)  # (N,)
    j = torch.arange(1, step_size + 1, device=actions.device).unsqueeze(1)  # (K, 1)
    health = state.health - state.wear_rate * j  # (K, N)
    flight = state.flights + j  # (K, N)
    rows = _flight_rows(state.episode_key, flight, health, tables)

    in_budget = j <= budget
    safety = state.safety - state.safety_rate * j  # (K, N)
    hazard = failure_rate(safety, state.safety_rate, flight, state.repairs, d)  # (K, N)
    fails = in_budget & ~sell & (rows.hazard_draw < -torch.expm1(-hazard))
    # A min over flights, not a cumsum: a reduction fuses into the compiled kernel, a scan does not.
    first_failure = torch.where(fails, j, step_size + 1).amin(dim=0)  # (N,), K + 1 = none
    failed = first_failure <= step_size
    first_flight_failed = first_failure == 1
    flown = in_budget & (j <= first_failure)  # the failing flight is flown (the counter reads it) ...
    returned = flown & (j < first_failure)  # ... but has no row: the server returns the ones before it
    profit = p.profit_per_flight * profit_share(health, p) + p.profit_noise_std * rows.profit_noise
    earned = sum_over_flights(profit * (returned & ~sell))
    reward = torch.where(sell, p.sale_reward, earned - p.repair_cost * repair.to(torch.float32))
    failure_reward = torch.where(first_flight_failed, p.first_flight_failure_reward, p.failure_reward)
    reward = torch.where(failed, failure_reward, reward)

    n_flown = flown.sum(dim=0)
    state = replace(
        state,
        health=state.health - state.wear_rate * n_flown,
        safety=state.safety - state.safety_rate * n_flown,
        flights=state.flights + n_flown,
    )
    terminated = sell | failed
    truncated = active & ~terminated & (state.flights >= max_flights)
    transition = Transition(
        rows=rows.rows,
        row_flown=returned.T,
        row_flight=flight.T,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        failed=failed,
        flights=state.flights,
    )
    return state, transition


def sim_step(
    state: EngineState,
    env_key: torch.Tensor,
    episode: torch.Tensor,
    actions: torch.Tensor,
    active: torch.Tensor,
    step_size: int,
    max_flights: int,
    tables: SimTables,
    reset_ended: bool,
) -> tuple[EngineState, torch.Tensor, Transition, torch.Tensor | None]:
    """`advance`, then (if `reset_ended`) the next episode of every engine that ended.

    Returns `(state, episode, transition, first_rows)`: `episode` (N,) int64 counts each
    engine's episodes and keys the fresh ones as hash(env_key, episode); `first_rows` (N, 10)
    are the reset rows (meaningful where an engine ended; None without `reset_ended`, or when
    no engine ended). One function so that the fast path compiles a whole step into one graph.
    """
    state, transition = advance(state, actions, active, step_size, max_flights, tables)
    if not reset_ended:
        return state, episode, transition, None
    ended = transition.ended(active)
    if none_of(ended):  # no fresh engines to build: 200 of 710 us of an eager 4-engine step
        return state, episode, transition, None
    state, episode, first_rows = restart_engines(state, env_key, episode, ended, tables)
    return state, episode, transition, first_rows


def restart_engines(
    state: EngineState | None,
    env_key: torch.Tensor,
    episode: torch.Tensor,
    mask: torch.Tensor,
    tables: SimTables,
) -> tuple[EngineState, torch.Tensor, torch.Tensor]:
    """Start the next episode of the masked engines: `(state, episode, first_rows)`.

    Only masked engines advance their episode counter. Fresh engines are computed for all N and
    selected with `where`, which keeps the kernel free of host syncs. With `state=None` (before
    the first reset) the unmasked engines get a placeholder that is never observed.
    """
    episode = episode + mask.long()
    fresh, first_rows = reset_engines(rng.fold(env_key, episode), tables)
    state = fresh if state is None else fresh.where(mask, state)
    return state, episode, first_rows

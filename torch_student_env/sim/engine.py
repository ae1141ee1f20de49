"""Engine state and the two kernels of the embedded simulator: `reset_engines` and `advance`.

Both are pure functions of (state, inputs, constants) that return a new state, batched over N
engines and over the K flights of a step with closed-form maths: no Python loop over engines or
flights, no host synchronisation, any device. The model is documented in docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from torch_student_env.sim import rng
from torch_student_env.sim.params import SENSOR_JACOBIAN, SimParams
from torch_student_env.spec import NUM_FEATURES, NUM_HEALTH_PARAMS, NUM_SENSORS, SENSOR_NAMES, Action
from torch_student_env.window import push_rows

_FUEL = SENSOR_NAMES.index("Fuel_flow")
_EGT = SENSOR_NAMES.index("LPT_Tin")
# Salts that keep the engine-level and repair draws apart from the per-flight draws, which are
# keyed by flight index (< 2**31, so never equal to a salt >= 2**31).
_ENGINE_SALT = 0xE7A1_5A17
_REPAIR_STREAM = 0xB5EE_D007  # both folded as their low 32 bits
_ROW_DRAWS = 6  # hashes per flight row: phase+DTAMB, hazard, 4 x (2 normals)
ROW_WIDTH = NUM_FEATURES + 1  # the 9 challenge features + the hidden health of that flight
# Plain ints: under torch.compile, `tensor == Action.SELL` (an IntEnum) silently compares False.
_SELL, _REPAIR = int(Action.SELL), int(Action.REPAIR)


@dataclass(frozen=True)
class EngineState:
    """Everything that changes, per engine. Shapes for N engines, always with N last.

    Engines are the last (innermost) dimension of every tensor of the simulator, so elementwise
    code runs along N in whole SIMD vectors (CPU) or coalesced warps (GPU), and a per-engine mask
    of shape (N,) broadcasts against any field.
    """

    episode_key: torch.Tensor  # (N,) int32, hash of (seed, env, episode): roots every draw
    damage: torch.Tensor  # (N,) float32, 0 pristine .. 1 a health deviation at its bound
    damage_floor: torch.Tensor  # (N,) float32, lowest damage a repair reaches (1 - health_cap)
    wear_rate: torch.Tensor  # (N,) float32, damage per flight in the linear phase
    wear_growth: torch.Tensor  # (N,) float32, exponential growth rate of damage per flight
    flights: torch.Tensor  # (N,) int64, flights flown in this episode
    repairs: torch.Tensor  # (N,) int64, repairs done in this episode
    health_offset: torch.Tensor  # (10, N) float32, manufacturing health deviations
    wear_direction: torch.Tensor  # (10, N) float32, health deviations per unit damage

    def health_params(self) -> torch.Tensor:
        """The 10 ODSMR health deviations now, (N, 10)."""
        return (self.health_offset + self.damage * self.wear_direction).T

    def where(self, mask: torch.Tensor, other: EngineState) -> EngineState:
        """Per engine, this state where `mask` (N,) is True, else `other` (no boolean indexing)."""
        return EngineState(
            **{f.name: torch.where(mask, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)}
        )


@dataclass(frozen=True)
class Transition:
    """What `advance` reports about one step of K flights. Shapes for N engines, K rows.

    The `row*` fields are None when the backend returns the recomputed `window` instead.
    """

    rows: torch.Tensor | None  # (N, K, 10) float32: 9 features + hidden health, per flight
    row_flown: torch.Tensor | None  # (N, K) bool, rows actually flown (a prefix of each engine's rows)
    row_flight: torch.Tensor | None  # (N, K) int64, flight index of each row within its episode
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool, sold or failed
    truncated: torch.Tensor  # (N,) bool, reached the flight limit without terminating
    failed: torch.Tensor  # (N,) bool, catastrophic failure in this step
    flights: torch.Tensor  # (N,) int64, flights flown in the episode after this step
    repairs: torch.Tensor  # (N,) int64, repairs done in the episode after this step
    row_damage: torch.Tensor | None = None  # (N, K) float32, damage of each row's flight (local only)
    # A backend that can recompute the whole window returns it instead of the `row*` fields:
    window: torch.Tensor | None = None  # (N, W, 10) float32, the last W rows of each episode
    window_flight: torch.Tensor | None = None  # (N, W) int64, their flight indices, -1 = padding

    def ended(self, active: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the `active` engines whose episode ended in this transition."""
        return active & (self.terminated | self.truncated)


class SimTables:
    """The constants of `SimParams` as tensors on one device, built once per env.

    Per-sensor tables are shaped (7, 1, 1) so that they broadcast against the simulator's
    channel-first (7, N, K) sensor blocks.
    """

    def __init__(self, params: SimParams, device: torch.device) -> None:
        def t(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        def per_sensor(values) -> torch.Tensor:
            return t(values).view(-1, NUM_SENSORS, 1, 1).squeeze(0)

        ones = (1.0,) * NUM_SENSORS
        self.params = params
        self.jacobian = t(SENSOR_JACOBIAN)  # (7, 10)
        self.phase_ratio = per_sensor((ones, params.climb_ratio, params.takeoff_ratio))  # (3, 7, 1, 1)
        self.baseline = self.phase_ratio * per_sensor(params.cruise_baseline)  # (3, 7, 1, 1)
        self.dtamb_low = t(params.dtamb_low)  # (3,)
        self.dtamb_span = t(params.dtamb_high) - self.dtamb_low  # (3,)
        self.dtamb_sensitivity = per_sensor(params.dtamb_sensitivity)  # (7, 1, 1)
        self.noise_std = per_sensor(params.noise_std)  # (7, 1, 1)
        self.module_prior = t(params.module_wear_prior).unsqueeze(1)  # (5, 1)
        # Wc wear sign per module: compressors lose flow, turbines gain it (erosion).
        self.flow_bound = t((params.compressor_flow_bound,) * 3 + (params.turbine_flow_bound,) * 2).unsqueeze(1)
        self.cruise_fuel = params.cruise_baseline[_FUEL]
        self.takeoff_egt_ratio = params.takeoff_ratio[_EGT]
        p_cr, p_mcl, _ = params.phase_probs
        self.phase_edges = (p_cr, p_cr + p_mcl)


def _by_phase(table: torch.Tensor, climb: torch.Tensor, takeoff: torch.Tensor) -> torch.Tensor:
    """`table[phase]` for a table of 3 phases, as two selects: no gather in the generated code."""
    return torch.where(takeoff, table[2], torch.where(climb, table[1], table[0]))


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def reset_engines(episode_key: torch.Tensor, tables: SimTables) -> tuple[EngineState, torch.Tensor]:
    """Fresh engines for the given episode keys, and each engine's first row (flight 0).

    Returns `(state, first_row)` with `first_row` of shape (N, 10). Callers that reset a subset
    merge with `EngineState.where`; computing all N and selecting keeps the kernel sync-free.
    """
    p = tables.params
    # Channel-first: draws and per-module quantities are (count, N), one contiguous block each.
    bits = rng.stream_bits(rng.fold(episode_key, _ENGINE_SALT), 18)  # (18, N)
    u = rng.uniform24(bits[:13])
    damage = _uniform(u[0], p.initial_damage_low, p.initial_damage_high)
    wear_rate = _uniform(u[1], p.wear_rate_low, p.wear_rate_high)
    wear_growth = _uniform(u[2], p.wear_growth_low, p.wear_growth_high)
    # Wear split over modules: prior x uniform, scaled so the most worn module reaches its
    # bounds exactly at damage 1 (which makes "damage >= 1" the "deviation past bound" rule).
    module_weight = tables.module_prior * u[3:8]  # (5, N)
    module_weight = module_weight / module_weight.amax(dim=0, keepdim=True)
    flow_ratio = _uniform(u[8:13], p.flow_to_efficiency_low, p.flow_to_efficiency_high)
    efficiency_dir = p.efficiency_bound * module_weight
    flow_dir = tables.flow_bound * module_weight * flow_ratio
    # Interleaved per module (efficiency, flow), as the 10 ODSMR health parameters are ordered.
    wear_direction = torch.stack((efficiency_dir, flow_dir), dim=1).reshape(NUM_HEALTH_PARAMS, -1)  # (10, N)
    z = torch.cat(rng.normal_pair(bits[13:18]), dim=0) * p.manufacturing_std  # (10, N)
    # Efficiencies can only be below nominal; flows scatter both ways.
    is_efficiency = (torch.arange(NUM_HEALTH_PARAMS, device=z.device) % 2 == 0).unsqueeze(1)
    health_offset = torch.where(is_efficiency, -z.abs(), z)

    state = EngineState(
        episode_key=episode_key,
        damage=damage,
        damage_floor=torch.zeros_like(damage),
        wear_rate=wear_rate,
        wear_growth=wear_growth,
        flights=torch.zeros_like(episode_key, dtype=torch.int64),
        repairs=torch.zeros_like(episode_key, dtype=torch.int64),
        health_offset=health_offset,
        wear_direction=wear_direction,
    )
    first = _flight_rows(state, damage.unsqueeze(0), state.flights.unsqueeze(0), tables)
    return state, first.rows[:, 0]


@dataclass(frozen=True)
class _Rows:
    rows: torch.Tensor  # (N, K, 10)
    fuel_ratio: torch.Tensor  # (K, N), noise-free fuel flow / healthy fuel flow
    egt_margin: torch.Tensor  # (K, N) K, take-off LPT_Tin margin to the limit
    hazard_draw: torch.Tensor  # (K, N) uniform in (0, 1)
    revenue_noise: torch.Tensor  # (K, N) standard normal


def _flight_rows(state: EngineState, damage: torch.Tensor, flight: torch.Tensor, tables: SimTables) -> _Rows:
    """Sensor rows of flights with the given damage (K, N) and flight indices (K, N).

    Works channel-first and engine-last, (7, K, N) for the sensors and (6, K, N) for the draws:
    the innermost dimension is then always the long engine dimension, so the loops that
    `torch.compile` generates fill whole SIMD vectors (an inner dimension of K = 10 fills 10 of
    16 lanes, with masked loads). The returned rows are an (N, K, 10) view of (10, K, N) memory.
    """
    bits = rng.stream_bits(rng.fold(state.episode_key, flight), _ROW_DRAWS)  # (6, K, N)
    phase_u, dtamb_u = rng.uniform16_pair(bits[0])
    low_edge, high_edge = tables.phase_edges
    climb, takeoff = phase_u >= low_edge, phase_u >= high_edge  # phase = climb + takeoff in {0, 1, 2}
    dtamb = _by_phase(tables.dtamb_low, climb, takeoff) + _by_phase(tables.dtamb_span, climb, takeoff) * dtamb_u
    normals = torch.cat(rng.normal_pair(bits[2:6]), dim=0)  # (8, K, N)

    # Health shifts at cruise scale, then scaled to the row's phase level.
    offset_shift = _sensor_shift(state.health_offset, tables).unsqueeze(1)  # (7, 1, N)
    wear_shift = _sensor_shift(state.wear_direction, tables).unsqueeze(1)  # (7, 1, N)
    health_shift = offset_shift + damage * wear_shift  # (7, K, N)
    sensors = (
        _by_phase(tables.baseline, climb, takeoff)
        + tables.dtamb_sensitivity * (dtamb - tables.params.dtamb_reference)
        + health_shift * _by_phase(tables.phase_ratio, climb, takeoff)
        + normals[:NUM_SENSORS] * tables.noise_std
    )
    phase = climb.to(torch.float32) + takeoff.to(torch.float32)
    health = (1.0 - damage).clamp(0.0, 1.0)
    rows = torch.cat((sensors, phase.unsqueeze(0), dtamb.unsqueeze(0), health.unsqueeze(0)), dim=0)
    return _Rows(
        rows=rows.permute(2, 1, 0),
        fuel_ratio=1.0 + health_shift[_FUEL] / tables.cruise_fuel,
        egt_margin=takeoff_egt_margin(health_shift[_EGT], tables),
        hazard_draw=rng.uniform24(bits[1]),
        revenue_noise=normals[NUM_SENSORS],
    )


def _sensor_shift(health: torch.Tensor, tables: SimTables) -> torch.Tensor:
    """Sensor shifts J @ health (7, N) of health deviations (10, N), summed in a fixed order.

    Not a matmul: BLAS picks kernels by N, and a different summation order would make engine i's
    rows depend on how many engines run beside it. Compiled, this also fuses into the row loop.
    """
    return (tables.jacobian.unsqueeze(-1) * health.unsqueeze(0)).sum(dim=1)


def takeoff_egt_margin(lpt_tin_shift: torch.Tensor, tables: SimTables) -> torch.Tensor:
    """Take-off LPT_Tin margin to the failure limit (K) from the cruise-scale LPT_Tin shift."""
    return tables.params.egt_margin_new - lpt_tin_shift * tables.takeoff_egt_ratio


def salvage_value(state: EngineState, params: SimParams) -> torch.Tensor:
    """What selling each engine pays now, (N,): falls with damage, flights and repairs."""
    wear = (1.0 - state.damage).clamp(min=0.0)
    age = torch.exp(-state.flights.to(torch.float32) / params.salvage_age_scale)
    history = params.salvage_repair_factor ** state.repairs.to(torch.float32)
    return params.salvage_new * wear * age * history


def advance(
    state: EngineState,
    actions: torch.Tensor,
    active: torch.Tensor,
    n_rows: int,
    max_flights: int,
    tables: SimTables,
) -> tuple[EngineState, Transition]:
    """Apply each engine's action, then fly up to `n_rows` flights; returns (new state, transition).

    `actions` (N,) int64 in {0, 1, 2}; `active` (N,) bool: inactive engines (finished, awaiting a
    reset) neither act nor fly and earn nothing. A repair happens before the step's flights; a
    sale ends the episode before them. Flying stops after the first failed flight (its row is
    observed, its profit is not earned) or when the episode reaches `max_flights`.
    """
    p = tables.params
    sell = active & (actions == _SELL)
    repair = active & (actions == _REPAIR)

    # Imperfect repair: remove a random share of the damage above the floor; the result becomes
    # the new floor, so health_cap never rises, and wear accelerates a little.
    repair_u = rng.uniform24(rng.fold(rng.fold(state.episode_key, state.flights), _REPAIR_STREAM))
    restored = _uniform(repair_u, p.repair_restore_low, p.repair_restore_high) * (state.damage - state.damage_floor)
    repaired = state.damage - restored
    state = replace(
        state,
        damage=torch.where(repair, repaired, state.damage),
        damage_floor=torch.where(repair, repaired, state.damage_floor),
        wear_growth=torch.where(repair, state.wear_growth * (1.0 + p.repair_growth_penalty), state.wear_growth),
        repairs=state.repairs + repair.long(),
    )
    repair_cost = torch.where(repair, p.repair_cost_base + p.repair_cost_per_damage * restored, 0.0)
    salvage = torch.where(sell, salvage_value(state, p), 0.0)

    # Flights: closed-form damage after j = 1..K flights of d(damage)/dflight = r + g * damage.
    # Per-flight quantities are (K, N), engines innermost (see `_flight_rows`).
    budget = torch.where(active & ~sell, (max_flights - state.flights).clamp(0, n_rows), 0)  # (N,)
    j = torch.arange(1, n_rows + 1, device=actions.device).unsqueeze(1)  # (K, 1)
    growth = torch.exp(state.wear_growth * j)  # (K, N)
    damage = state.damage * growth + (state.wear_rate / state.wear_growth) * (growth - 1.0)
    flight = state.flights + j  # (K, N)
    rows = _flight_rows(state, damage, flight, tables)

    in_budget = j <= budget
    hazard = p.hazard_at_limit * torch.exp(-rows.egt_margin / p.hazard_margin_scale)
    fails = in_budget & ((rows.hazard_draw < hazard) | (damage >= 1.0) | (rows.egt_margin <= 0.0))
    # The failing flight is flown, nothing after it. A min over flights, not a cumsum: a
    # reduction fuses into the compiled kernel, a scan does not.
    first_failure = torch.where(fails, j, n_rows + 1).amin(dim=0)  # (N,), K + 1 = none
    flown = in_budget & (j <= first_failure)
    failed = first_failure <= n_rows
    profit = p.revenue_per_flight + p.revenue_noise_std * rows.revenue_noise - p.fuel_cost_per_flight * rows.fuel_ratio
    earned = (profit * (flown & ~fails)).sum(dim=0)
    reward = earned - repair_cost + salvage - p.failure_penalty * failed.to(torch.float32)

    n_flown = flown.sum(dim=0)
    last = (n_flown - 1).clamp(min=0).unsqueeze(0)
    state = replace(
        state,
        damage=torch.where(n_flown > 0, damage.gather(0, last).squeeze(0), state.damage),
        flights=state.flights + n_flown,
    )
    terminated = sell | failed
    truncated = active & ~terminated & (state.flights >= max_flights)
    transition = Transition(
        rows=rows.rows,
        row_flown=flown.T,
        row_flight=flight.T,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        failed=failed,
        flights=state.flights,
        repairs=state.repairs,
        row_damage=damage.T,
    )
    return state, transition


def sim_step(
    state: EngineState,
    window_damage: torch.Tensor | None,
    env_key: torch.Tensor,
    episode: torch.Tensor,
    actions: torch.Tensor,
    active: torch.Tensor,
    n_rows: int,
    max_flights: int,
    tables: SimTables,
    reset_ended: bool,
    recompute_window: bool = False,
) -> tuple[EngineState, torch.Tensor | None, torch.Tensor, Transition, torch.Tensor | None]:
    """`advance`, then (if `reset_ended`) the next episode of every engine that ended.

    Returns `(state, window_damage, episode, transition, first_rows)`: `episode` (N,) int64
    counts each engine's episodes and keys the fresh ones as hash(env_key, episode);
    `first_rows` (N, 10) are the reset rows (meaningful where an engine ended; None without
    `reset_ended`). One function so that the fast path compiles a whole step into one graph.

    `window_damage` (W, N) tracks the damage of each engine's last W flights (None: not kept).
    With `recompute_window`, the transition carries the window recomputed from them instead of
    the K new rows (see `window_rows`).
    """
    state, transition = advance(state, actions, active, n_rows, max_flights, tables)
    if window_damage is not None:
        n_new = transition.row_flown.sum(1)
        window_damage = push_rows(window_damage.unsqueeze(0), transition.row_damage.T.unsqueeze(0), n_new)[0]
        if recompute_window:
            window, window_flight = window_rows(state, window_damage, tables)
            # The new rows live on in the window only: not returning them spares their memory.
            per_row = dict.fromkeys(("rows", "row_flown", "row_flight", "row_damage"))  # all None
            transition = replace(transition, window=window, window_flight=window_flight, **per_row)
    if reset_ended:
        state, window_damage, episode, first_rows = restart_engines(
            state, window_damage, env_key, episode, transition.ended(active), tables
        )
        return state, window_damage, episode, transition, first_rows
    return state, window_damage, episode, transition, None


def window_rows(
    state: EngineState, window_damage: torch.Tensor, tables: SimTables
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of each engine's last W flights, recomputed: `(window (N, W, 10), flight (N, W))`.

    A row is a pure function of (engine, flight index, damage at that flight), and only damage
    changes along an episode, so a window is W row evaluations from the damages (W, N) of its
    flights. Compiled, this replaces shifting each engine's 10-channel window by its own number
    of new rows, whose per-engine indices compile to scalar gathers, by arithmetic along N.
    Padding slots (before flight 0) are zero rows with flight -1.
    """
    width = window_damage.shape[0]
    flight = state.flights + torch.arange(1 - width, 1, device=window_damage.device).unsqueeze(1)  # (W, N)
    valid = flight >= 0
    rows = _flight_rows(state, window_damage, flight.clamp(min=0), tables).rows.permute(2, 1, 0)  # (10, W, N)
    window = torch.where(valid, rows, 0.0)
    return window.permute(2, 1, 0), torch.where(valid, flight, -1).T


def restart_engines(
    state: EngineState | None,
    window_damage: torch.Tensor | None,
    env_key: torch.Tensor,
    episode: torch.Tensor,
    mask: torch.Tensor,
    tables: SimTables,
) -> tuple[EngineState, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Start the next episode of the masked engines: `(state, window_damage, episode, first_rows)`.

    Only masked engines advance their episode counter; their window damages (W, N), if kept,
    restart at the fresh engine's damage (only the newest slot, flight 0, is ever read). Fresh
    engines are computed for all N and selected with `where`, which keeps the kernel free of
    host syncs. With `state=None` (before the first reset) the unmasked engines get a
    placeholder that is never observed.
    """
    episode = episode + mask.long()
    fresh, first_rows = reset_engines(rng.fold(env_key, episode), tables)
    state = fresh if state is None else fresh.where(mask, state)
    if window_damage is not None:
        window_damage = torch.where(mask, state.damage, window_damage)
    return state, window_damage, episode, first_rows

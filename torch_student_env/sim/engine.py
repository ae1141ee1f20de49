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
    """Everything that changes, per engine. Shapes for N engines."""

    episode_key: torch.Tensor  # (N,) int32, hash of (seed, env, episode): roots every draw
    damage: torch.Tensor  # (N,) float32, 0 pristine .. 1 a health deviation at its bound
    damage_floor: torch.Tensor  # (N,) float32, lowest damage a repair reaches (1 - health_cap)
    wear_rate: torch.Tensor  # (N,) float32, damage per flight in the linear phase
    wear_growth: torch.Tensor  # (N,) float32, exponential growth rate of damage per flight
    flights: torch.Tensor  # (N,) int64, flights flown in this episode
    repairs: torch.Tensor  # (N,) int64, repairs done in this episode
    health_offset: torch.Tensor  # (N, 10) float32, manufacturing health deviations
    wear_direction: torch.Tensor  # (N, 10) float32, health deviations per unit damage

    def health_params(self) -> torch.Tensor:
        """The 10 ODSMR health deviations now, (N, 10)."""
        return self.health_offset + self.damage.unsqueeze(-1) * self.wear_direction

    def where(self, mask: torch.Tensor, other: EngineState) -> EngineState:
        """Per engine, this state where `mask` is True, else `other` (no boolean indexing)."""
        merged = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            m = mask.view(mask.shape + (1,) * (mine.dim() - 1))
            merged[f.name] = torch.where(m, mine, theirs)
        return EngineState(**merged)


@dataclass(frozen=True)
class Transition:
    """What `advance` reports about one step of K flights. Shapes for N engines, K rows."""

    rows: torch.Tensor  # (N, K, 10) float32: 9 features + hidden health, per flight
    row_flown: torch.Tensor  # (N, K) bool, rows actually flown (a prefix of each engine's rows)
    row_flight: torch.Tensor  # (N, K) int64, flight index of each row within its episode
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool, sold or failed
    truncated: torch.Tensor  # (N,) bool, reached the flight limit without terminating
    failed: torch.Tensor  # (N,) bool, catastrophic failure in this step
    flights: torch.Tensor  # (N,) int64, flights flown in the episode after this step
    repairs: torch.Tensor  # (N,) int64, repairs done in the episode after this step


class SimTables:
    """The constants of `SimParams` as tensors on one device, built once per env."""

    def __init__(self, params: SimParams, device: torch.device) -> None:
        def t(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        ones = (1.0,) * NUM_SENSORS
        self.params = params
        self.jacobian_t = t(SENSOR_JACOBIAN).T.contiguous()  # (10, 7)
        self.phase_ratio = t((ones, params.climb_ratio, params.takeoff_ratio))  # (3, 7)
        self.baseline = self.phase_ratio * t(params.cruise_baseline)  # (3, 7)
        self.dtamb_low = t(params.dtamb_low)  # (3,)
        self.dtamb_span = t(params.dtamb_high) - self.dtamb_low  # (3,)
        self.dtamb_sensitivity = t(params.dtamb_sensitivity)  # (7,)
        self.noise_std = t(params.noise_std)  # (7,)
        self.module_prior = t(params.module_wear_prior)  # (5,)
        # Wc wear sign per module: compressors lose flow, turbines gain it (erosion).
        self.flow_bound = t((params.compressor_flow_bound,) * 3 + (params.turbine_flow_bound,) * 2)
        self.cruise_fuel = params.cruise_baseline[_FUEL]
        self.takeoff_egt_ratio = params.takeoff_ratio[_EGT]
        p_cr, p_mcl, _ = params.phase_probs
        self.phase_edges = (p_cr, p_cr + p_mcl)


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def reset_engines(episode_key: torch.Tensor, tables: SimTables) -> tuple[EngineState, torch.Tensor]:
    """Fresh engines for the given episode keys, and each engine's first row (flight 0).

    Returns `(state, first_row)` with `first_row` of shape (N, 10). Callers that reset a subset
    merge with `EngineState.where`; computing all N and selecting keeps the kernel sync-free.
    """
    p = tables.params
    n = episode_key.shape[0]
    bits = rng.stream_bits(rng.fold(episode_key, _ENGINE_SALT), 18)  # (N, 18)
    u = rng.uniform24(bits[:, :13])
    damage = _uniform(u[:, 0], p.initial_damage_low, p.initial_damage_high)
    wear_rate = _uniform(u[:, 1], p.wear_rate_low, p.wear_rate_high)
    wear_growth = _uniform(u[:, 2], p.wear_growth_low, p.wear_growth_high)
    # Wear split over modules: prior x uniform, scaled so the most worn module reaches its
    # bounds exactly at damage 1 (which makes "damage >= 1" the "deviation past bound" rule).
    module_weight = tables.module_prior * u[:, 3:8]
    module_weight = module_weight / module_weight.amax(dim=1, keepdim=True)
    flow_ratio = _uniform(u[:, 8:13], p.flow_to_efficiency_low, p.flow_to_efficiency_high)
    efficiency_dir = p.efficiency_bound * module_weight
    flow_dir = tables.flow_bound * module_weight * flow_ratio
    wear_direction = torch.stack((efficiency_dir, flow_dir), dim=-1).reshape(n, NUM_HEALTH_PARAMS)
    z = torch.cat(rng.normal_pair(bits[:, 13:18]), dim=1) * p.manufacturing_std  # (N, 10)
    # Efficiencies can only be below nominal; flows scatter both ways.
    is_efficiency = torch.arange(NUM_HEALTH_PARAMS, device=z.device) % 2 == 0
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
    first = _flight_rows(state, damage.unsqueeze(1), state.flights.unsqueeze(1), tables)
    return state, first.rows[:, 0]


@dataclass(frozen=True)
class _Rows:
    rows: torch.Tensor  # (N, K, 10)
    fuel_ratio: torch.Tensor  # (N, K), noise-free fuel flow / healthy fuel flow
    egt_margin: torch.Tensor  # (N, K) K, take-off LPT_Tin margin to the limit
    hazard_draw: torch.Tensor  # (N, K) uniform in (0, 1)
    revenue_noise: torch.Tensor  # (N, K) standard normal


def _flight_rows(state: EngineState, damage: torch.Tensor, flight: torch.Tensor, tables: SimTables) -> _Rows:
    """Sensor rows of flights with the given damage (N, K) and flight indices (N, K)."""
    bits = rng.stream_bits(rng.fold(state.episode_key.unsqueeze(1), flight), _ROW_DRAWS)  # (N, K, 6)
    phase_u, dtamb_u = rng.uniform16_pair(bits[..., 0])
    low_edge, high_edge = tables.phase_edges
    phase = (phase_u >= low_edge).long() + (phase_u >= high_edge).long()  # (N, K) in {0, 1, 2}
    dtamb = tables.dtamb_low[phase] + tables.dtamb_span[phase] * dtamb_u
    normals = torch.cat(rng.normal_pair(bits[..., 2:6]), dim=-1)  # (N, K, 8)

    # Health shifts at cruise scale, then scaled to the row's phase level.
    offset_shift = state.health_offset @ tables.jacobian_t  # (N, 7)
    wear_shift = state.wear_direction @ tables.jacobian_t  # (N, 7)
    health_shift = offset_shift.unsqueeze(1) + damage.unsqueeze(-1) * wear_shift.unsqueeze(1)  # (N, K, 7)
    ratio = tables.phase_ratio[phase]  # (N, K, 7)
    sensors = (
        tables.baseline[phase]
        + tables.dtamb_sensitivity * (dtamb - tables.params.dtamb_reference).unsqueeze(-1)
        + health_shift * ratio
        + normals[..., :NUM_SENSORS] * tables.noise_std
    )
    health = (1.0 - damage).clamp(0.0, 1.0)
    rows = torch.cat(
        (sensors, phase.to(torch.float32).unsqueeze(-1), dtamb.unsqueeze(-1), health.unsqueeze(-1)), dim=-1
    )
    return _Rows(
        rows=rows,
        fuel_ratio=1.0 + health_shift[..., _FUEL] / tables.cruise_fuel,
        egt_margin=takeoff_egt_margin(health_shift[..., _EGT], tables),
        hazard_draw=rng.uniform24(bits[..., 1]),
        revenue_noise=normals[..., NUM_SENSORS],
    )


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
    budget = torch.where(active & ~sell, (max_flights - state.flights).clamp(0, n_rows), 0)  # (N,)
    j = torch.arange(1, n_rows + 1, device=actions.device)  # (K,)
    growth = torch.exp(state.wear_growth.unsqueeze(1) * j)  # (N, K)
    damage = state.damage.unsqueeze(1) * growth + (state.wear_rate / state.wear_growth).unsqueeze(1) * (growth - 1.0)
    flight = state.flights.unsqueeze(1) + j  # (N, K)
    rows = _flight_rows(state, damage, flight, tables)

    in_budget = j <= budget.unsqueeze(1)
    hazard = p.hazard_at_limit * torch.exp(-rows.egt_margin / p.hazard_margin_scale)
    fails = in_budget & ((rows.hazard_draw < hazard) | (damage >= 1.0) | (rows.egt_margin <= 0.0))
    fails_int = fails.to(torch.int32)
    failed_earlier = (torch.cumsum(fails_int, dim=1) - fails_int) > 0
    flown = in_budget & ~failed_earlier  # the failing flight is flown, nothing after it
    failed = fails.any(dim=1)
    profit = p.revenue_per_flight + p.revenue_noise_std * rows.revenue_noise - p.fuel_cost_per_flight * rows.fuel_ratio
    earned = (profit * (flown & ~fails)).sum(dim=1)
    reward = earned - repair_cost + salvage - p.failure_penalty * failed.to(torch.float32)

    n_flown = flown.sum(dim=1)
    last = (n_flown - 1).clamp(min=0).unsqueeze(1)
    state = replace(
        state,
        damage=torch.where(n_flown > 0, damage.gather(1, last).squeeze(1), state.damage),
        flights=state.flights + n_flown,
    )
    terminated = sell | failed
    truncated = active & ~terminated & (state.flights >= max_flights)
    transition = Transition(
        rows=rows.rows,
        row_flown=flown,
        row_flight=flight,
        reward=reward,
        terminated=terminated,
        truncated=truncated,
        failed=failed,
        flights=state.flights,
        repairs=state.repairs,
    )
    return state, transition

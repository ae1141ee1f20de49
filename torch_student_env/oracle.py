"""The oracle: the policy that maximises the expected episode return given the hidden state.

Dynamic programming over (repairs, wear rate, health) at every step, with the simulator's mean
dynamics: each step of K flights lowers health by K times the wear rate, earns the flights'
profit if the engine survives them (at the simulator's own `failure_rate`, which depends on
health, age and repairs), and ends the episode with `failure_reward` if it does not; a repair
pays `repair_cost`, restores health to 1 and sets the wear rate to the one a repair at this age
brings; a sale pays `sale_reward`; the episode is truncated at the flight limit. Backward
induction over steps gives, for every grid state, the best action; the policy reads it at each
engine's true (repairs, health, wear rate, age).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict

from torch_student_env.sim.engine import SimTables, failure_rate, wear_rate_after_repair
from torch_student_env.sim.params import DATA_LAST_REPAIRS, SimParams
from torch_student_env.spec import Action

HEALTH_GRID = torch.linspace(-0.5, 1.0, 301, dtype=torch.float64)  # 0.005 apart
RATE_GRID = torch.linspace(0.004, 0.04, 73, dtype=torch.float64)  # 0.0005 apart


def repair_classes(params: SimParams) -> int:
    """How many repair counts the failure rate tells apart: never repaired and repaired, and each
    count until a fading margin is gone (`margin_loss_per_repair`)."""
    if params.margin_loss_per_repair <= 0:
        return 2
    return DATA_LAST_REPAIRS + math.ceil(1 / params.margin_loss_per_repair) + 1


def _interp(grid: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights for linear interpolation of `x` on a uniform `grid` (clamped)."""
    step = float(grid[1] - grid[0])
    pos = ((x - float(grid[0])) / step).clamp(0, len(grid) - 1 - 1e-9)
    low = pos.floor().long()
    return low, low + 1, pos - low


def plan(params: SimParams, step_size: int, max_flights: int) -> torch.Tensor:
    """Best action (int8) for every (step index t, repair class, wear-rate index, health index).

    `t` counts steps of `step_size` flights from the episode start; the repair class is the
    repair count, capped at `repair_classes(params) - 1`: (T + 1, C, R, H).
    """
    return _backward_induction(params, step_size, max_flights)[0]


def plan_values(params: SimParams, step_size: int, max_flights: int) -> torch.Tensor:
    """The action values behind `plan` (float32, in `Action` order): (T + 1, 3, C, R, H), 53 MB
    for the fitted model. At the last step only selling is allowed (-inf otherwise)."""
    return _backward_induction(params, step_size, max_flights, keep_values=True)[1]


def _backward_induction(
    params: SimParams, step_size: int, max_flights: int, keep_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(best actions, action values if `keep_values`): the values are kept in float32 only on
    request, and the best actions come from the float64 values either way."""
    p = params
    tables = SimTables(p, torch.device("cpu"))
    d = tables.dynamics(torch.zeros((), dtype=torch.long))  # one model: its constants as floats
    classes = repair_classes(p)
    c = torch.arange(classes).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
    h, r = HEALTH_GRID.view(1, 1, -1), RATE_GRID.view(1, -1, 1)  # (1, 1, H), (1, R, 1)
    j = torch.arange(1, step_size + 1, dtype=torch.float64).view(-1, 1, 1)
    flight_health = (h - r * j).unsqueeze(0)  # (1, K, R, H)
    profit = (p.profit_per_flight * flight_health).sum(1)  # (1, R, H)
    next_h = h - r * step_size  # (1, R, H)
    lo, hi, w = _interp(HEALTH_GRID, next_h.expand(classes, -1, -1))
    steps = math.ceil(max_flights / step_size)
    value = torch.zeros(classes, len(RATE_GRID), len(HEALTH_GRID), dtype=torch.float64)
    best = torch.zeros(steps + 1, classes, len(RATE_GRID), len(HEALTH_GRID), dtype=torch.int8)
    values = torch.full((steps + 1, 3) + best.shape[1:], -math.inf) if keep_values else None
    after_repair = (c.view(-1) + 1).clamp(max=classes - 1)
    for t in range(steps - 1, -1, -1):
        age = t * step_size
        flight = (age + j).unsqueeze(0)  # (1, K, 1, 1)
        hazard = failure_rate(flight_health, r.unsqueeze(0), flight, c, d)  # (C, K, R, H)
        survive = torch.exp(-hazard.sum(1))  # (C, R, H)
        cont = value.gather(2, lo) * (1 - w) + value.gather(2, hi) * w
        fly = survive * (profit + cont) + (1 - survive) * p.failure_reward  # (C, R, H)
        rate = wear_rate_after_repair(
            torch.tensor([float(age)], dtype=torch.float64), tables, p.wear_rate_rise_past_knots
        )
        r_lo, r_hi, r_w = _interp(RATE_GRID, rate)
        at_full = fly[:, r_lo, -1] * (1 - r_w) + fly[:, r_hi, -1] * r_w  # (C, 1): fly from health 1
        repair = (-p.repair_cost + at_full[after_repair]).view(classes, 1, 1).expand_as(fly)
        sell = torch.full_like(fly, p.sale_reward)
        q = torch.stack([fly, repair, sell])  # Action order
        value, best[t] = q.max(0).values, q.argmax(0).to(torch.int8)
        if values is not None:
            values[t] = q
    best[steps] = int(Action.SELL)
    if values is not None:
        values[steps, int(Action.SELL)] = p.sale_reward
    return best, values


class OraclePolicy:
    """Plays the `plan` table at each engine's true repairs, health, wear rate and age (needs `privileged=True`)."""

    def __init__(self, params: SimParams | None = None, step_size: int = 10, max_flights: int = 1000) -> None:
        self.params, self.step_size = params or SimParams(), step_size
        self.table = plan(self.params, step_size, max_flights)
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, td: TensorDict) -> torch.Tensor:
        if "health" not in td.keys():
            raise KeyError("OraclePolicy needs the hidden health: build the env with privileged=True")
        return self.act(td["age"], td["repairs"], td["health"], td["wear_rate"])

    def act(self, age: torch.Tensor, repairs: torch.Tensor, health: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """The plan's action (N,) at these (flights flown, repairs, health, wear rate): the true
        state for the oracle, an estimate of it for `policies.BeliefPolicy`."""
        table = self._on.setdefault(age.device, self.table.to(age.device))
        steps = torch.div(age, self.step_size, rounding_mode="floor").clamp(0, table.shape[0] - 1)
        h = ((health.double() - float(HEALTH_GRID[0])) / float(HEALTH_GRID[1] - HEALTH_GRID[0])).round()
        r = ((rate.double() - float(RATE_GRID[0])) / float(RATE_GRID[1] - RATE_GRID[0])).round()
        h = h.long().clamp(0, table.shape[3] - 1)
        r = r.long().clamp(0, table.shape[2] - 1)
        c = repairs.clamp(0, table.shape[1] - 1)
        return table[steps, c, r, h].long()

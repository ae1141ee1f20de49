"""The oracle: the policy that maximises the expected episode return given the hidden state.

Dynamic programming over (health, wear rate, flights flown) on a grid, with the simulator's
mean dynamics: each step of K flights lowers health by K times the wear rate, earns the flights'
profit if the engine survives them (failure rate exp(a - b h) per flight), and ends the episode
with `failure_reward` if it does not; a repair pays `repair_cost`, restores health to 1 and
sets the wear rate to the one a repair at this age brings; a sale pays `sale_reward`; the episode
is truncated at the flight limit. Backward induction over flights gives, for every grid state,
the best action; the policy reads it at each engine's true (health, wear rate, age).
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict

from torch_student_env.sim.engine import SimTables, wear_rate_after_repair
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import Action

HEALTH_GRID = torch.linspace(-0.3, 1.0, 261, dtype=torch.float64)  # 0.005 apart
RATE_GRID = torch.linspace(0.004, 0.04, 73, dtype=torch.float64)  # 0.0005 apart


def _interp(grid: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices and weights for linear interpolation of `x` on a uniform `grid` (clamped)."""
    step = float(grid[1] - grid[0])
    pos = ((x - float(grid[0])) / step).clamp(0, len(grid) - 1 - 1e-9)
    low = pos.floor().long()
    return low, low + 1, pos - low


def plan(params: SimParams, step_size: int, max_flights: int) -> torch.Tensor:
    """Best action (int8) for every (step index t, wear-rate index, health index) state.

    `t` counts steps of `step_size` flights from the episode start: (T + 1, R, H).
    """
    p = params
    h, r = HEALTH_GRID.view(1, -1), RATE_GRID.view(-1, 1)  # (1, H), (R, 1)
    j = torch.arange(1, step_size + 1, dtype=torch.float64).view(-1, 1, 1)
    flight_health = h - r * j  # (K, R, H)
    hazard = torch.exp(p.hazard_log_at_zero - p.hazard_health_slope * flight_health)
    survive = torch.exp(-hazard.sum(0))  # (R, H)
    profit = (p.profit_per_flight * flight_health).sum(0)  # (R, H)
    fly_reward = survive * profit + (1 - survive) * p.failure_reward
    next_h = h - r * step_size  # (R, H)
    lo, hi, w = _interp(HEALTH_GRID, next_h)
    steps = math.ceil(max_flights / step_size)
    tables = SimTables(p, torch.device("cpu"))
    value = torch.zeros(len(RATE_GRID), len(HEALTH_GRID), dtype=torch.float64)
    best = torch.zeros(steps + 1, len(RATE_GRID), len(HEALTH_GRID), dtype=torch.int8)
    for t in range(steps - 1, -1, -1):
        cont = value.gather(1, lo) * (1 - w) + value.gather(1, hi) * w
        fly = fly_reward + survive * cont  # (R, H)
        rate = wear_rate_after_repair(torch.tensor([t * step_size]), tables).double()
        r_lo, r_hi, r_w = _interp(RATE_GRID, rate)
        at_full = (fly[r_lo, -1] * (1 - r_w) + fly[r_hi, -1] * r_w).item()  # fly from health 1
        repair = -p.repair_cost + at_full
        sell = torch.full_like(fly, p.sale_reward)
        q = torch.stack([fly, torch.full_like(fly, repair), sell])  # Action order
        value, best[t] = q.max(0).values, q.argmax(0).to(torch.int8)
    best[steps] = int(Action.SELL)
    return best


class OraclePolicy:
    """Plays the `plan` table at each engine's true health, wear rate and age (needs `privileged=True`)."""

    def __init__(self, params: SimParams | None = None, step_size: int = 10, max_flights: int = 1000) -> None:
        self.params, self.step_size = params or SimParams(), step_size
        self.table = plan(self.params, step_size, max_flights)
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, td: TensorDict) -> torch.Tensor:
        if "health" not in td.keys():
            raise KeyError("OraclePolicy needs the hidden health: build the env with privileged=True")
        table = self._on.setdefault(td.device, self.table.to(td.device))
        steps = torch.div(td["flight"][:, -1], self.step_size, rounding_mode="floor").clamp(0, table.shape[0] - 1)
        health = ((td["health"].double() - float(HEALTH_GRID[0])) / float(HEALTH_GRID[1] - HEALTH_GRID[0])).round()
        rate = ((td["wear_rate"].double() - float(RATE_GRID[0])) / float(RATE_GRID[1] - RATE_GRID[0])).round()
        h = health.long().clamp(0, table.shape[2] - 1)
        r = rate.long().clamp(0, table.shape[1] - 1)
        return table[steps, r, h].long()

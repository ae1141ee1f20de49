"""The oracle: the policy that maximises the expected episode return given the hidden state.

Under the simulator's model an engine's whole state is a few numbers: its repairs, its age, the
flights since its last repair (or its start), and the spread factor `f` that its current wear
segment drew (its wear rate over the segment's mean rate, `wear_rate_after_repair` at the age of
the repair, or `wear_rate_new`). Health, safety and both rates follow from them in closed form
(`sim.engine`): health falls by `base * f` per flight, safety by `base * f ** safety_wear_share`.
So the oracle plans by dynamic programming on an exact grid of steps (age and flights since the
repair, in steps of `step_size` flights), each repair count, and a grid of `f`:

- flying a step earns its flights' profit if the engine survives them (at the simulator's own
  `failure_rate`), and ends the episode with `failure_reward` if it does not;
- a repair pays `repair_cost`, restores health and safety to 1, and draws the next segment's `f`:
  the plan takes it at its mean (f = 1, the model's mean dynamics). With `repair_draws=True` it
  averages over the draw's lognormal law instead (the oracle would then know the drawn `f`):
  exact under the model, and the same play on the fitted model (within 0.01 of a point on 2,048
  engines). With a wide spread that does not touch safety it is not: under a spread of 0.16
  and a safety that follows profit (the model before 2026-12-06) it kept engines about 880
  flights with 20 repairs, far past the data (docs/simulator.md, "Where the data ends");
- a sale pays `sale_reward`; the episode is truncated at the flight limit.

Backward induction over steps gives, for every grid state, the best action; the policy reads it
at each engine's true (age, repairs, flights since repair, wear rate). Only the profit noise is
averaged out: its mean is 0.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDict

from torch_student_env.sim.engine import SimTables, failure_rate, profit_share, wear_rate_after_repair
from torch_student_env.sim.params import DATA_LAST_REPAIRS, SimParams
from torch_student_env.spec import Action

# Grid of log f, the segment's wear-spread factor: ±0.5 covers three standard deviations of a
# repair's draw (0.16), and 0.02 apart is a health error under 0.01 after 50 flights at 0.02.
LOG_FACTOR_GRID = torch.linspace(-0.5, 0.5, 51, dtype=torch.float64)


def repair_classes(params: SimParams) -> int:
    """How many repair counts the failure rate tells apart: never repaired and repaired, and each
    count until a fading margin is gone (`margin_loss_per_repair`)."""
    if params.margin_loss_per_repair <= 0:
        return 2
    return DATA_LAST_REPAIRS + math.ceil(1 / params.margin_loss_per_repair) + 1


def factor_weights(spread: float) -> torch.Tensor:
    """The lognormal law of a segment's spread factor (mean 1, `spread` the sigma of its log) as
    weights on `LOG_FACTOR_GRID`; all on f = 1 for a spread below the grid's step."""
    step = float(LOG_FACTOR_GRID[1] - LOG_FACTOR_GRID[0])
    if spread < step:
        return (LOG_FACTOR_GRID.abs() < step / 2).double()
    weights = torch.exp(-0.5 * ((LOG_FACTOR_GRID + 0.5 * spread**2) / spread) ** 2)
    return weights / weights.sum()


def segment_base_rate(age_at_repair: torch.Tensor, repaired: torch.Tensor, tables: SimTables) -> torch.Tensor:
    """The mean wear rate of the current segment: `wear_rate_after_repair` at the age of the last
    repair, or `wear_rate_new` for a never-repaired engine (shapes broadcast)."""
    p = tables.params
    after = wear_rate_after_repair(age_at_repair, tables, p.wear_rate_rise_past_knots)
    return torch.where(repaired, after, torch.as_tensor(p.wear_rate_new, dtype=after.dtype))


def plan_index(
    age: torch.Tensor,
    repairs: torch.Tensor,
    since: torch.Tensor,
    rate: torch.Tensor,
    step_size: int,
    steps: int,
    classes: int,
    tables: SimTables,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plan's coordinates (step t, repair class, steps since the repair, log-f index) of
    engines at (flights flown, repairs, flights since the last repair, wear rate), for a plan of
    `steps` + 1 steps and `classes` repair classes. `rate` may carry leading dims of its own (the
    QMDP script's posterior points). No host sync: any device."""
    t = torch.div(age, step_size, rounding_mode="floor").clamp(0, steps)
    s = torch.div(since, step_size, rounding_mode="floor").clamp(0, steps)
    base = segment_base_rate((age - since).double(), repairs > 0, tables)
    log_factor = torch.log(rate.double().clamp(min=1e-9) / base)
    grid = LOG_FACTOR_GRID
    f = ((log_factor - float(grid[0])) / float(grid[1] - grid[0])).round().long().clamp(0, len(grid) - 1)
    return t, repairs.clamp(0, classes - 1), s, f


def plan(params: SimParams, step_size: int, max_flights: int, repair_draws: bool = False) -> torch.Tensor:
    """Best action (int8) for every (step t, repair class, steps since the repair, log-f index).

    `t` counts steps of `step_size` flights from the episode start; the repair class is the
    repair count, capped at `repair_classes(params) - 1`: (T + 1, C, T + 1, F). `repair_draws`:
    see `OraclePolicy`.
    """
    return _backward_induction(params, step_size, max_flights, repair_draws)[0]


def plan_values(params: SimParams, step_size: int, max_flights: int, repair_draws: bool = False) -> torch.Tensor:
    """The action values behind `plan` (float32, in `Action` order): (T + 1, 3, C, T + 1, F). At
    the last step only selling is allowed (-inf otherwise)."""
    return _backward_induction(params, step_size, max_flights, repair_draws, keep_values=True)[1]


def _backward_induction(
    params: SimParams, step_size: int, max_flights: int, repair_draws: bool, keep_values: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(best actions, action values if `keep_values`): the values are kept in float32 only on
    request, and the best actions come from the float64 values either way."""
    p = params
    tables = SimTables(p, torch.device("cpu"))
    d = tables.dynamics(torch.zeros((), dtype=torch.long))  # one model: its constants as floats
    classes, steps = repair_classes(p), math.ceil(max_flights / step_size)
    c = torch.arange(classes).view(-1, 1, 1, 1)  # (C, 1, 1, 1)
    s = torch.arange(steps + 1, dtype=torch.float64).view(1, 1, -1, 1)  # (1, 1, S, 1) steps since repair
    factor = LOG_FACTOR_GRID.exp().view(1, 1, 1, -1)  # (1, 1, 1, F)
    j = torch.arange(1, step_size + 1, dtype=torch.float64).view(1, -1, 1, 1)  # (1, K, 1, 1)
    since = s * step_size + j  # (1, K, S, 1) flights since the repair at each flight of the step
    start = torch.where(c > 0, 1.0, p.health_new).double()  # (C, 1, 1, 1)
    # After a repair the next segment starts at s = 0 with a fresh draw of f.
    draw = factor_weights(p.wear_spread_repair if repair_draws else 0.0)  # (F,)
    after_repair = (torch.arange(classes) + 1).clamp(max=classes - 1)
    value = torch.zeros(classes, steps + 1, len(LOG_FACTOR_GRID), dtype=torch.float64)  # (C, S, F)
    best = torch.zeros((steps + 1,) + value.shape, dtype=torch.int8)
    values = torch.full((steps + 1, 3) + value.shape, -math.inf) if keep_values else None
    for t in range(steps - 1, -1, -1):
        age = t * step_size
        at_repair = (age - s * step_size).clamp(min=0.0)  # (1, 1, S, 1)
        base = segment_base_rate(at_repair, c > 0, tables)  # (C, 1, S, 1)
        health = start - base * factor * since  # (C, K, S, F)
        safety_rate = base * factor**p.safety_wear_share
        safety = start - safety_rate * since
        hazard = failure_rate(safety, safety_rate, age + j, c, d)
        survive = torch.exp(-hazard.sum(1))  # (C, S, F)
        profit = p.profit_per_flight * profit_share(health, p).sum(1)
        cont = torch.cat((value[:, 1:], value[:, -1:]), dim=1)  # one step on: s + 1
        fly = survive * (profit + cont) + (1 - survive) * p.failure_reward
        repair = -p.repair_cost + (fly[after_repair, 0] * draw).sum(-1)  # (C,)
        sell = torch.full_like(fly, p.sale_reward)
        q = torch.stack([fly, repair.view(-1, 1, 1).expand_as(fly), sell])  # Action order
        value, best[t] = q.max(0).values, q.argmax(0).to(torch.int8)
        if values is not None:
            values[t] = q
    best[steps] = int(Action.SELL)
    if values is not None:
        values[steps, int(Action.SELL)] = p.sale_reward
    return best, values


class OraclePolicy:
    """Plays the `plan` table at each engine's true age, repairs, flights since repair and wear
    rate (needs `privileged=True`)."""

    def __init__(
        self, params: SimParams | None = None, step_size: int = 10, max_flights: int = 1000, repair_draws: bool = False
    ) -> None:
        self.params, self.step_size = params or SimParams(), step_size
        self.table = plan(self.params, step_size, max_flights, repair_draws)
        self._tables = SimTables(self.params, torch.device("cpu"))
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, td: TensorDict) -> torch.Tensor:
        if "wear_rate" not in td.keys():
            raise KeyError("OraclePolicy needs the hidden wear rate: build the env with privileged=True")
        return self.act(td["age"], td["repairs"], td["since_repair"], td["wear_rate"])

    def act(self, age: torch.Tensor, repairs: torch.Tensor, since: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """The plan's action (N,) at these (flights flown, repairs, flights since the last repair,
        wear rate): the true state for the oracle, an estimate of the rate for
        `policies.BeliefPolicy`. No host sync: any device."""
        table = self._on.setdefault(age.device, self.table.to(age.device))
        t, c, s, f = plan_index(
            age, repairs, since, rate, self.step_size, table.shape[0] - 1, table.shape[1], self._tables
        )
        return table[t, c, s, f].long()

"""Baseline policies: batched callables `(TensorDict) -> actions (N,) int64` on the td's device.

- `RandomPolicy`: uniform over the three actions;
- `DoNothingPolicy`: always fly;
- `TimeBasedPolicy`: the airline's conservative rule, repair every K flights, sell at age A;
- `ThresholdPolicy`: repair/sell when the context-normalised EGT proxy (LPT_Tin) rises too far;
- `OraclePolicy`: acts on the true hidden health (needs `privileged=True`), an upper reference.

`make_policy(name, env)` builds one by name with defaults tuned on training seeds (not the
evaluation seeds), see docs/simulator.md.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from torch_student_env.sim.engine import SimTables, takeoff_egt_margin
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import DTAMB_COLUMN, PHASE_COLUMN, SENSOR_NAMES, Action

_EGT = SENSOR_NAMES.index("LPT_Tin")


def _fill(td: TensorDict, action: Action | torch.Tensor) -> torch.Tensor:
    return torch.full(td.batch_size, int(action), dtype=torch.int64, device=td.device)


class RandomPolicy:
    """Uniform random actions from a private generator (the global RNG is never touched)."""

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        return torch.randint(0, len(Action), td.batch_size, generator=self.generator, device=self.generator.device)


class DoNothingPolicy:
    """Never repair, never sell: the engine flies until it fails or reaches the time limit."""

    def __call__(self, td: TensorDict) -> torch.Tensor:
        return _fill(td, Action.DO_NOTHING)


class TimeBasedPolicy:
    """Repair every `repair_every` flights, sell once the engine has flown `sell_at` flights.

    Stateless: reads the newest row's flight index. A repair is due when the last step crossed a
    multiple of `repair_every` (hence `step_size`).
    """

    def __init__(self, repair_every: int = 100, sell_at: int = 450, step_size: int = 10) -> None:
        self.repair_every, self.sell_at, self.step_size = repair_every, sell_at, step_size

    def __call__(self, td: TensorDict) -> torch.Tensor:
        flight = td["flight"][:, -1]
        crossed = torch.div(flight, self.repair_every, rounding_mode="floor") > torch.div(
            flight - self.step_size, self.repair_every, rounding_mode="floor"
        )
        repair = crossed & (flight > 0)
        actions = torch.where(repair, int(Action.REPAIR), int(Action.DO_NOTHING))
        return torch.where(flight >= self.sell_at, int(Action.SELL), actions)


def egt_rise(td: TensorDict, params: SimParams | None = None) -> torch.Tensor:
    """Mean rise of LPT_Tin over the healthy reference, in K at cruise scale, per engine (N,).

    Removes the context (phase level, DTAMB) with the model's own healthy reference, which an
    operator would know from the engine's pass-off test, and averages the window's valid rows.
    """
    tables = _tables(params or SimParams(), td.device)
    obs, valid = td["observation"], td["valid"]
    phase = obs[..., PHASE_COLUMN].long().clamp(0, 2)
    per_phase = tables.baseline[:, _EGT, 0, 0], tables.phase_ratio[:, _EGT, 0, 0]  # (3,) each
    reference = per_phase[0][phase] + tables.dtamb_sensitivity[_EGT, 0, 0] * (
        obs[..., DTAMB_COLUMN] - tables.params.dtamb_reference
    )
    rise = (obs[..., _EGT] - reference) / per_phase[1][phase]
    weights = valid.to(obs.dtype)
    return (rise * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class ThresholdPolicy:
    """Repair when the EGT proxy rises `repair_above` K; sell past `sell_above` K or `sell_at` flights."""

    def __init__(
        self, repair_above: float = 45.0, sell_above: float = 50.0, sell_at: int = 900, params: SimParams | None = None
    ) -> None:
        self.repair_above, self.sell_above, self.sell_at = repair_above, sell_above, sell_at
        self.params = params or SimParams()

    def __call__(self, td: TensorDict) -> torch.Tensor:
        rise = egt_rise(td, self.params)
        flight = td["flight"][:, -1]
        actions = torch.where(rise > self.repair_above, int(Action.REPAIR), int(Action.DO_NOTHING))
        sell = (rise > self.sell_above) | (flight >= self.sell_at)
        return torch.where(sell, int(Action.SELL), actions)


class OraclePolicy:
    """Acts on the true take-off EGT margin and health cap (keys of a `privileged=True` env).

    Repairs when the margin falls under `repair_margin` K while a repair still buys enough
    (`health_cap` above `min_cap`); otherwise sells once the margin is under `sell_margin` K.
    Close to the time limit, selling beats a repair that cannot pay back.
    """

    def __init__(
        self,
        repair_margin: float = 35.0,
        sell_margin: float = 30.0,
        min_cap: float = 0.75,
        max_flights: int = 1000,
        payback_flights: int = 60,
        params: SimParams | None = None,
    ) -> None:
        self.repair_margin, self.sell_margin, self.min_cap = repair_margin, sell_margin, min_cap
        self.max_flights, self.payback_flights = max_flights, payback_flights
        self.params = params or SimParams()

    def egt_margin(self, td: TensorDict) -> torch.Tensor:
        """True take-off LPT_Tin margin to the failure limit, K (N,)."""
        if "health_params" not in td.keys():
            raise KeyError("OraclePolicy needs the hidden health: build the env with privileged=True")
        tables = _tables(self.params, td.device)
        return takeoff_egt_margin(td["health_params"] @ tables.jacobian[_EGT], tables)

    def __call__(self, td: TensorDict) -> torch.Tensor:
        margin = self.egt_margin(td)
        flights_left = self.max_flights - td["flight"][:, -1]
        worth_repairing = (td["health_cap"] > self.min_cap) & (flights_left > self.payback_flights)
        risky = margin < self.repair_margin
        actions = torch.where(risky & worth_repairing, int(Action.REPAIR), int(Action.DO_NOTHING))
        sell = (margin < self.sell_margin) & ~worth_repairing
        return torch.where(sell, int(Action.SELL), actions)


_TABLES: dict[tuple[SimParams, torch.device], SimTables] = {}


def _tables(params: SimParams, device: torch.device) -> SimTables:
    key = (params, torch.device(device))
    if key not in _TABLES:
        _TABLES[key] = SimTables(params, key[1])
    return _TABLES[key]


BASELINES = ("random", "do_nothing", "time_based", "threshold", "oracle")


def make_policy(name: str, env=None, seed: int = 0, device: torch.device | str | None = None):
    """A baseline by name (one of `BASELINES`), configured for `env`'s step size and limits.

    Without an env the defaults of `make_env` apply (step_size 10, 1,000 flights, default params).
    """
    step_size = env.step_size if env is not None else 10
    device = device if device is not None else (env.device if env is not None else "cpu")
    max_flights = env.config.max_steps_per_episode if env is not None else 1000
    params = env.config.sim_params if env is not None else SimParams()
    if name == "random":
        return RandomPolicy(seed=seed, device=device)
    if name == "do_nothing":
        return DoNothingPolicy()
    if name == "time_based":
        return TimeBasedPolicy(step_size=step_size)
    if name == "threshold":
        return ThresholdPolicy(params=params)
    if name == "oracle":
        return OraclePolicy(max_flights=max_flights, params=params)
    raise ValueError(f"unknown policy {name!r}; baselines are {BASELINES}")

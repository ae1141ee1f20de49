"""Baseline policies: batched callables `(TensorDict) -> actions (N,) int64` on the td's device.

- `RandomPolicy`: uniform over the three actions;
- `DoNothingPolicy`: always fly;
- `TimeBasedPolicy`: the airline's rule, repair every K flights, sell at age A;
- `ThresholdPolicy`: repair, or sell, when the health read from the sensors that show wear
  (HP_Nmech, HPC_Tout, HPC_Pout_st) falls below a threshold;
- `BeliefPolicy`: the oracle's plan at a state estimated from what a player can know (sensor
  rows and the player-side counters): the reachable ceiling;
- `OraclePolicy` (`torch_student_env.oracle`): the best action for the true hidden state, by
  dynamic programming on the model (needs `privileged=True`).

`make_policy(name, env)` builds one by name from `BASELINES`, whose entries also say which read
the hidden state, with defaults tuned on training seeds (never the evaluation seeds) by
`scripts/tune_baselines.py`; docs/simulator.md gives the tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tensordict import TensorDict

# The belief estimator lives in `belief`; its names stay importable from here.
from torch_student_env.belief import (  # noqa: F401
    WEAR_SENSORS,
    BeliefPolicy,
    CounterSchedulePolicy,
    estimate_state,
    sensor_health,
    sensor_health_rows,
)
from torch_student_env.oracle import OraclePolicy
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE, Action


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

    def __init__(self, repair_every: int = 60, sell_at: int = 280, step_size: int = 10) -> None:
        self.repair_every, self.sell_at, self.step_size = repair_every, sell_at, step_size

    def __call__(self, td: TensorDict) -> torch.Tensor:
        flight = td["flight"][:, -1]
        crossed = torch.div(flight, self.repair_every, rounding_mode="floor") > torch.div(
            flight - self.step_size, self.repair_every, rounding_mode="floor"
        )
        repair = crossed & (flight > 0)
        actions = torch.where(repair, int(Action.REPAIR), int(Action.DO_NOTHING))
        return torch.where(flight >= self.sell_at, int(Action.SELL), actions)


class ThresholdPolicy:
    """Repair when the sensor-read health falls below `repair_below`; past `sell_after` flights,
    when a repair would no longer pay back, sell at that point instead.

    Health is the average of the window's newest `rows` rows (the default window it was tuned
    on): over a longer window the average would lag the engine's wear.
    """

    def __init__(
        self, repair_below: float = 0.35, sell_after: int = 280, params: SimParams | None = None, rows: int = 10
    ) -> None:
        self.repair_below, self.sell_after, self.rows = repair_below, sell_after, rows
        self.params = params or SimParams()

    def __call__(self, td: TensorDict) -> torch.Tensor:
        worn = sensor_health(td, self.params, self.rows) < self.repair_below
        old = td["flight"][:, -1] >= self.sell_after
        return torch.where(worn, torch.where(old, int(Action.SELL), int(Action.REPAIR)), int(Action.DO_NOTHING))


@dataclass(frozen=True)
class PolicySettings:
    """What a baseline is built from: the env's step size and flight limit, the model it reads
    sensors or plans with, and a seed and device."""

    step_size: int
    max_flights: int
    params: SimParams
    seed: int
    device: torch.device | str


@dataclass(frozen=True)
class Baseline:
    """A baseline's entry: how to build it; whether it is a fixed rule of what a player sees (no
    plan: the reports compare learned policies with the best of these); whether it reads the
    hidden state (needs `privileged=True`; a player cannot have it, so it can neither teach a
    player's policy nor be told apart from the model it runs on: it plans on each model, see
    `for_model`)."""

    build: Callable[[PolicySettings], Callable[[TensorDict], torch.Tensor]]
    rule: bool = False
    reads_hidden_state: bool = False


BASELINES: dict[str, Baseline] = {
    "random": Baseline(lambda s: RandomPolicy(seed=s.seed, device=s.device)),
    "do_nothing": Baseline(lambda s: DoNothingPolicy(), rule=True),
    "time_based": Baseline(lambda s: TimeBasedPolicy(step_size=s.step_size), rule=True),
    "threshold": Baseline(lambda s: ThresholdPolicy(params=s.params), rule=True),
    "belief": Baseline(lambda s: BeliefPolicy(params=s.params, step_size=s.step_size, max_flights=s.max_flights)),
    "oracle": Baseline(
        lambda s: OraclePolicy(params=s.params, step_size=s.step_size, max_flights=s.max_flights),
        reads_hidden_state=True,
    ),
}


def make_policy(
    name: str, env=None, seed: int = 0, device: torch.device | str | None = None, params: SimParams | None = None
):
    """A baseline by name (one of `BASELINES`), configured for `env`'s step size and limits.

    Without an env the defaults of `make_env` apply (step_size 10, 1,000 flights, default params);
    `params` overrides the model the oracle plans on and the threshold rule reads sensors with.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown policy {name!r}; baselines are {list(BASELINES)}")
    if params is None:
        params = env.config.sim_params if env is not None else SimParams()
    settings = PolicySettings(
        step_size=env.step_size if env is not None else CLIENT_STEP_SIZE,
        max_flights=env.config.max_steps_per_episode if env is not None else CLIENT_STEPS_PER_EPISODE,
        params=params,
        seed=seed,
        device=device if device is not None else (env.device if env is not None else "cpu"),
    )
    return BASELINES[name].build(settings)


def for_model(name: str, seed: int = 0, device: torch.device | str = "cpu"):
    """A factory of baseline `name` for a model's `SimParams` (`evaluate_variants`): a policy that
    reads the hidden state knows the model that runs, and plans on it; the others play the fitted
    model's rules whatever runs."""
    knows = BASELINES[name].reads_hidden_state
    return lambda params: make_policy(name, seed=seed, device=device, params=params if knows else None)

"""What a user would otherwise write: one engine of the same model as a NumPy Gymnasium env.

Same equations and constants as `torch_student_env.sim` (SimParams), one engine, NumPy's
generator instead of the counter-based hash (so not bit-identical). Used by `scripts/bench.py`
under `gymnasium.vector.SyncVectorEnv` and TorchRL's `SerialEnv`; not part of the package.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from torch_student_env.sim.params import REPAIR_AGE_KNOTS, SimParams


class SingleEngineEnv(gym.Env):
    """One turbofan engine; `step(action)` flies `step_size` flights, returns a (step_size, 9) window."""

    metadata = {"render_modes": []}

    def __init__(self, step_size: int = 10, max_flights: int = 1000, params: SimParams | None = None) -> None:
        self.p = params or SimParams()
        self.step_size, self.max_flights = step_size, max_flights
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (step_size, 9), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.ages = np.array((0.0,) + REPAIR_AGE_KNOTS)
        self.rates = np.array((self.p.wear_rate_new,) + self.p.wear_rate_after_repair)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        p, r = self.p, self.np_random
        self.health, self.flights = p.health_new, 0
        self.rate = p.wear_rate_new * np.exp(p.wear_spread_new * r.normal() - p.wear_spread_new**2 / 2)
        return np.zeros((self.step_size, 9), np.float32) + self._rows(np.array([self.health]))[-1], {}

    def _rows(self, health):
        p, r, k = self.p, self.np_random, len(health)
        x, dtamb = p.dtamb_floor, np.empty(k)
        for j in range(k):  # the per-step AR(1), restarted at the floor
            if j:
                x = p.dtamb_mean + p.dtamb_persistence * (x - p.dtamb_mean) + p.dtamb_innovation_std * r.normal()
            dtamb[j] = min(max(x, p.dtamb_floor), p.dtamb_ceiling)
        seen = dtamb + np.where(np.arange(k) > 0, p.hidden_dtamb_std * r.normal(size=k), 0.0)
        wear = (health - 1.0)[:, None]
        sensors = (
            np.asarray(p.sensor_level)
            + np.asarray(p.sensor_per_dtamb) * (seen - p.dtamb_reference)[:, None]
            + (np.asarray(p.sensor_per_health) + np.asarray(p.sensor_per_health_sq) * wear) * wear
            + r.normal(size=(k, 7)) * np.asarray(p.sensor_noise_std)
        )
        return np.concatenate([sensors, np.zeros((k, 1)), dtamb[:, None]], axis=1).astype(np.float32)

    def step(self, action):
        p, r = self.p, self.np_random
        window = np.zeros((self.step_size, 9), np.float32)
        if action == 2:
            self.flights += 1
            window[-1] = self._rows(np.array([self.health]))[0]
            return window, p.sale_reward, True, False, {}
        reward = 0.0
        if action == 1:
            spread = np.exp(p.wear_spread_repair * r.normal() - p.wear_spread_repair**2 / 2)
            self.health, self.rate = 1.0, np.interp(self.flights, self.ages, self.rates) * spread
            reward -= p.repair_cost
        k = min(self.step_size, self.max_flights - self.flights)
        health = self.health - self.rate * np.arange(1, k + 1)
        hazard = np.exp(p.hazard_log_at_zero - p.hazard_health_slope * health)
        fails = r.uniform(size=k) < -np.expm1(-hazard)
        if fails.any():
            n = int(np.argmax(fails)) + 1
            if n > 1:
                window[-n:] = self._rows(health[:n])
            return window, p.failure_reward if n > 1 else p.first_flight_failure_reward, True, False, {}
        reward += float((p.profit_per_flight * health + p.profit_noise_std * r.normal(size=k)).sum())
        self.health, self.flights = float(health[-1]), self.flights + k
        window[-k:] = self._rows(health)
        return window, reward, False, self.flights >= self.max_flights, {}

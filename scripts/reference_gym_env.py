"""What a user would otherwise write: one engine of the same model as a NumPy Gymnasium env.

Same equations and constants as `torch_student_env.sim` (SimParams, SENSOR_JACOBIAN), one engine,
NumPy's generator instead of the counter-based hash (so not bit-identical). Used by
`scripts/bench.py` under `gymnasium.vector.SyncVectorEnv` and TorchRL's `SerialEnv`; not part of
the package.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from torch_student_env.sim.params import SENSOR_JACOBIAN, SimParams

_FUEL, _EGT = 4, 3


class SingleEngineEnv(gym.Env):
    """One turbofan engine; `step(action)` flies `step_size` flights, returns a (step_size, 9) window."""

    metadata = {"render_modes": []}

    def __init__(self, step_size: int = 10, max_flights: int = 1000, params: SimParams | None = None) -> None:
        p = self.p = params or SimParams()
        self.step_size, self.max_flights = step_size, max_flights
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (step_size, 9), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.jac = np.asarray(SENSOR_JACOBIAN, dtype=np.float64)  # (7, 10)
        ones = np.ones(7)
        self.ratio = np.stack([ones, p.climb_ratio, p.takeoff_ratio])
        self.base = self.ratio * np.asarray(p.cruise_baseline)
        self.flow_bound = np.array([p.compressor_flow_bound] * 3 + [p.turbine_flow_bound] * 2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        p, r = self.p, self.np_random
        self.damage = r.uniform(p.initial_damage_low, p.initial_damage_high)
        self.floor, self.flights, self.repairs = 0.0, 0, 0
        self.rate = r.uniform(p.wear_rate_low, p.wear_rate_high)
        self.growth = r.uniform(p.wear_growth_low, p.wear_growth_high)
        w = np.asarray(p.module_wear_prior) * r.uniform(size=5)
        w /= w.max()
        flow = self.flow_bound * w * r.uniform(p.flow_to_efficiency_low, p.flow_to_efficiency_high, 5)
        direction = np.stack([p.efficiency_bound * w, flow], axis=1).reshape(10)
        offset = r.normal(0, p.manufacturing_std, 10)
        offset[::2] = -np.abs(offset[::2])
        self.offset_shift, self.wear_shift = self.jac @ offset, self.jac @ direction
        rows, *_ = self._rows(np.array([self.damage]))
        return np.zeros((self.step_size, 9), np.float32) + rows[-1], {}

    def _rows(self, damage):
        p, r, k = self.p, self.np_random, len(damage)
        phase = np.searchsorted(np.cumsum(p.phase_probs), r.uniform(size=k), side="right").clip(0, 2)
        dtamb = np.asarray(p.dtamb_low)[phase] + (np.asarray(p.dtamb_high) - np.asarray(p.dtamb_low))[
            phase
        ] * r.uniform(size=k)
        shift = self.offset_shift + damage[:, None] * self.wear_shift  # (k, 7)
        sensors = (
            self.base[phase]
            + np.asarray(p.dtamb_sensitivity) * (dtamb - p.dtamb_reference)[:, None]
            + shift * self.ratio[phase]
            + r.normal(size=(k, 7)) * np.asarray(p.noise_std)
        )
        rows = np.concatenate([sensors, phase[:, None], dtamb[:, None]], axis=1).astype(np.float32)
        fuel_ratio = 1 + shift[:, _FUEL] / p.cruise_baseline[_FUEL]
        margin = p.egt_margin_new - shift[:, _EGT] * p.takeoff_ratio[_EGT]
        return rows, fuel_ratio, margin

    def step(self, action):
        p, r = self.p, self.np_random
        reward = 0.0
        if action == 2:
            salvage = p.salvage_new * max(1 - self.damage, 0) * np.exp(-self.flights / p.salvage_age_scale)
            return (
                np.zeros((self.step_size, 9), np.float32),
                salvage * p.salvage_repair_factor**self.repairs,
                True,
                False,
                {},
            )
        if action == 1:
            restored = r.uniform(p.repair_restore_low, p.repair_restore_high) * (self.damage - self.floor)
            self.damage = self.floor = self.damage - restored
            self.growth *= 1 + p.repair_growth_penalty
            self.repairs += 1
            reward -= p.repair_cost_base + p.repair_cost_per_damage * restored
        k = min(self.step_size, self.max_flights - self.flights)
        j = np.arange(1, k + 1)
        growth = np.exp(self.growth * j)
        damage = self.damage * growth + self.rate / self.growth * (growth - 1)
        rows, fuel_ratio, margin = self._rows(damage)
        hazard = p.hazard_at_limit * np.exp(-margin / p.hazard_margin_scale)
        fails = (r.uniform(size=k) < hazard) | (damage >= 1) | (margin <= 0)
        n = int(np.argmax(fails)) + 1 if fails.any() else k
        profit = p.revenue_per_flight + p.revenue_noise_std * r.normal(size=k) - p.fuel_cost_per_flight * fuel_ratio
        reward += float(profit[: n - 1 if fails.any() else n].sum()) - (p.failure_penalty if fails.any() else 0.0)
        self.damage, self.flights = float(damage[n - 1]), self.flights + n
        window = np.zeros((self.step_size, 9), np.float32)
        window[-n:] = rows[:n]
        return window, reward, bool(fails.any()), self.flights >= self.max_flights and not fails.any(), {}

"""Every constant of the challenge engine, with units and how it was fitted.

The defaults are fitted by `scripts/calibrate.py` to real episodes of the challenge's server
(`../shared/data/real_server/`), and checked by the replay of `python -m torch_student_env.fidelity`;
docs/simulator.md gives the equations and the fidelity table. Change the dynamics by passing
another `SimParams` to `make_env(sim_params=...)`. Tuples (not tensors) keep the dataclass frozen,
hashable and device-free; `SimTables` turns them into tensors on the env's device once.

Health is the engine's hidden state: the profit of its next flight as a share of the profit of a
just-repaired engine (flattened below `profit_knee_health`). It falls by the engine's wear rate
each flight, and a repair sets it back to 1. Failures follow a second hidden state, safety,
restored with health but falling at the segment's mean wear rate (`safety_wear_share`): the
engine fails, at random, more and more often as its safety nears 0 (after a repair, as it nears
-0.2: a repair restores more safety than profit). Several `SimParams` that differ only in
`VARIANT_FIELDS` form a plausible-model ensemble (`sim.variants`), one drawn per episode.
"""

from __future__ import annotations

from dataclasses import dataclass

# Age (flights flown in the episode) at which the wear rate after a repair is tabulated: the ages
# at which the calibration data holds repairs. Between knots it is interpolated linearly; before
# the first knot from the fresh engine's rate, past the last it stays at the last knot's value.
REPAIR_AGE_KNOTS: tuple[float, ...] = (60.0, 120.0, 180.0, 210.0, 240.0, 300.0, 360.0)

# Where the real logs end (docs/simulator.md, "Where the data ends"): no logged engine was
# repaired past this age or more often than this; beyond them the model extrapolates.
DATA_LAST_AGE: float = REPAIR_AGE_KNOTS[-1]
DATA_LAST_REPAIRS: int = 6

# The fields a plausible-model variant may change (`sim.variants`); every other field is
# identified by the data and shared by all variants of one env.
VARIANT_FIELDS: tuple[str, ...] = (
    "hazard_log_at_zero",
    "hazard_health_slope",
    "repair_safety_margin",
    "hazard_floor_new",
    "hazard_max_per_flight",
    "margin_loss_per_repair",
    "age_hazard_per_flight",
    "wear_rate_rise_past_knots",
    "failure_lag_flights",
)


@dataclass(frozen=True)
class SimParams:
    """Constants of the challenge engine. Units in the comments; fits in docs/simulator.md."""

    # --- money -------------------------------------------------------------------------------
    profit_per_flight: float = 50.034  # profit of a flight at health 1 (a just-repaired engine)
    profit_noise_std: float = 4.1  # per flight: a 10-flight step's reward varies by about 13
    repair_cost: float = 984.59  # paid on a repair step, which also flies (and earns) its flights
    # Below this health a flight's profit falls more slowly than health (the sensors, which
    # follow health, keep falling linearly): profit share = h + flattening * (knee - h)^2 there.
    profit_knee_health: float = 0.36
    profit_flattening: float = 0.4
    failure_reward: float = -1000.0  # a failing step's whole reward
    first_flight_failure_reward: float = 0.0  # the server's reward when a step's first flight fails
    sale_reward: float = 150.0  # a sale's whole reward, whatever the engine's state

    # --- wear ----------------------------------------------------------------------------------
    health_new: float = 0.9491  # a fresh engine: 47.49 per flight, against 50.03 after a repair
    wear_rate_new: float = 0.007776  # health lost per flight by a fresh engine (0.389 of profit)
    # Health lost per flight after a repair at each REPAIR_AGE_KNOTS age: a repair restores health
    # to 1, but the later in an engine's life it comes, the faster the engine wears afterwards.
    wear_rate_after_repair: tuple[float, ...] = (0.011943, 0.014206, 0.014256, 0.021755, 0.021647, 0.024698, 0.024443)
    wear_spread_new: float = 0.03  # relative spread (lognormal sigma) of a fresh engine's wear rate
    wear_spread_repair: float = 0.08  # relative spread of the wear rate drawn at each repair

    # --- failure -------------------------------------------------------------------------------
    # Failure rate per flight, at a flight of health h (docs/simulator.md, "Failures"):
    #     r = exp(hazard_log_at_zero - hazard_health_slope * (h + margin + failure_lag_flights * wear))
    #     r / (1 + r / hazard_max_per_flight) + hazard_floor_new (never repaired)
    #     + age_hazard_per_flight * (flight - DATA_LAST_AGE)+
    # margin = 0 before the first repair and `repair_safety_margin` after: a repair restores the
    # engine's safety more than its profit (repaired engines fail near health -0.2, never-repaired
    # ones near 0.1). Fitted by maximum likelihood on the never-repaired and exploration logs.
    hazard_log_at_zero: float = -0.9273
    hazard_health_slope: float = 13.78
    repair_safety_margin: float = 0.2163
    hazard_floor_new: float = 1.121e-4  # a never-repaired engine's failures at any health (1 in 8,000)
    hazard_max_per_flight: float = 0.1488  # the rate saturates here (the real hazard is log-concave)
    # Safety is a damage state of its own (docs/simulator.md, "Failures"): it falls at the
    # segment's wear rate scaled by the engine's own spread factor to this power, so 1 = failures
    # see the profit's health, 0 = failures see the segment's mean wear, whatever this engine's
    # profit does (the logs' failures are sharper in time than the profit's spread allows).
    safety_wear_share: float = 0.02648
    # Extrapolation past the data (all 0 = the simplest reading; the variants of
    # `sim.variants` set them, docs/simulator.md "Where the data ends"):
    margin_loss_per_repair: float = 0.0  # share of the margin lost per repair past DATA_LAST_REPAIRS
    age_hazard_per_flight: float = 0.0  # extra failure rate per flight of age past DATA_LAST_AGE
    wear_rate_rise_past_knots: float = 0.0  # wear rate after a repair: + this per flight of age past the last knot
    failure_lag_flights: float = 0.0  # alternative structure: safety leads health by this many flights of wear

    # --- sensors (spec.SENSOR_NAMES order) -----------------------------------------------------
    # Each sensor: level + per_dtamb * (DTAMB - 10) + per_health * (h - 1) + per_health_sq * (h - 1)^2
    # + noise. HP_Nmech, HPC_Tout and HPC_Pout_st fall with wear; LPT_Tin and Fuel_flow rise only
    # near failure; HPC_Tin and LP_Nmech follow DTAMB alone.
    sensor_level: tuple[float, ...] = (797.7522, 19403.27, 335.8054, 1120.457, 0.3721564, 1371296.0, 3957.8)
    sensor_per_dtamb: tuple[float, ...] = (2.6732, 36.44, 1.2068, 3.8361, 0.00082729, 88.593, 7.0407)
    sensor_per_health: tuple[float, ...] = (12.961, 230.91, 0.054909, 1.1138, 0.00029875, 50744.0, -0.09697)
    sensor_per_health_sq: tuple[float, ...] = (0.114, -175.67, 0.21343, 3.6242, 0.00064344, -636.67, -0.004327)
    # Row noise of each sensor, on top of the hidden ambient deviation below.
    sensor_noise_std: tuple[float, ...] = (0.98, 25.0, 0.072, 0.478, 0.000084, 4880.0, 0.38)
    # The sensors see DTAMB plus a hidden deviation of this std (K), except on a step's first
    # flight, where DTAMB is exactly its floor: HPC_Tin, LPT_Tin, Fuel_flow and LP_Nmech, which
    # follow DTAMB closely, are 3-4 times noisier on the other flights of a step.
    hidden_dtamb_std: float = 0.175
    dtamb_reference: float = 10.0  # K, DTAMB at which `sensor_level` holds

    # --- ambient temperature deviation (DTAMB, K) ----------------------------------------------
    # The server restarts DTAMB at its floor on the first flight of every step; it then relaxes
    # towards its mean as a clipped AR(1): x' = mean + persistence * (x - mean) + innovation * z.
    dtamb_floor: float = 9.1
    dtamb_ceiling: float = 10.9
    dtamb_mean: float = 9.86
    dtamb_persistence: float = 0.84
    dtamb_innovation_std: float = 0.20

    def __post_init__(self) -> None:
        for name in (
            "sensor_level",
            "sensor_per_dtamb",
            "sensor_per_health",
            "sensor_per_health_sq",
            "sensor_noise_std",
        ):
            if len(getattr(self, name)) != 7:
                raise ValueError(f"SimParams.{name} needs 7 values (one per sensor), got {len(getattr(self, name))}")
        if len(self.wear_rate_after_repair) != len(REPAIR_AGE_KNOTS):
            raise ValueError(
                f"SimParams.wear_rate_after_repair needs {len(REPAIR_AGE_KNOTS)} values (one per age in "
                f"REPAIR_AGE_KNOTS), got {len(self.wear_rate_after_repair)}"
            )
        positive = ("profit_per_flight", "health_new", "wear_rate_new", "hazard_health_slope", "hazard_max_per_flight")
        for name in positive + ("wear_rate_after_repair",):
            values = getattr(self, name)
            if min(values if isinstance(values, tuple) else (values,)) <= 0:
                raise ValueError(f"SimParams.{name} must be > 0, got {values}")
        for name in (
            "repair_safety_margin",
            "hazard_floor_new",
            "margin_loss_per_repair",
            "age_hazard_per_flight",
            "wear_rate_rise_past_knots",
            "failure_lag_flights",
            "profit_flattening",
            "profit_noise_std",
            "wear_spread_new",
            "wear_spread_repair",
            "dtamb_innovation_std",
            "hidden_dtamb_std",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"SimParams.{name} must be >= 0, got {getattr(self, name)}")
        if min(self.sensor_noise_std) < 0:
            raise ValueError(f"SimParams.sensor_noise_std must be >= 0, got {self.sensor_noise_std}")
        if not 0 <= self.safety_wear_share <= 1:
            raise ValueError(f"SimParams.safety_wear_share must be in [0, 1], got {self.safety_wear_share}")
        if not 0 <= self.dtamb_persistence < 1:
            raise ValueError(f"SimParams.dtamb_persistence must be in [0, 1), got {self.dtamb_persistence}")
        if not self.dtamb_floor < self.dtamb_ceiling:
            raise ValueError(
                f"SimParams needs dtamb_floor < dtamb_ceiling, got {self.dtamb_floor}, {self.dtamb_ceiling}"
            )

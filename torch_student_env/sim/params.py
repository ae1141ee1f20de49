"""Every constant of the embedded turbofan model, with units and sources.

Change the dynamics by passing another `SimParams` to `make_env(sim_params=...)`; the defaults are
the calibration described in `docs/simulator.md`. Tuples (not tensors) keep the dataclass frozen,
hashable and device-free; the engine turns them into tensors on the env's device once.
"""

from __future__ import annotations

from dataclasses import dataclass

# Jacobian of the 7 sensors (rows, spec.SENSOR_NAMES order) with respect to the 10 health
# deviations (columns: LPC_Eff, LPC_Wc, Fan_Eff, Fan_Wc, HPC_Eff, HPC_Wc, HPT_Eff, HPT_Wc,
# LPT_Eff, LPT_Wc), in sensor units per unit deviation, at cruise. Degradation makes Eff and
# compressor Wc negative and turbine Wc positive. Magnitudes marked * are the published ODSMR
# surrogate sensitivities quoted in DESIGN.md (mean |dsensor/ddeviation| over 16 contexts); the
# others are our assumptions, smaller and physically signed (see docs/simulator.md).
SENSOR_JACOBIAN: tuple[tuple[float, ...], ...] = (
    # LPC_Eff LPC_Wc  Fan_Eff  Fan_Wc   HPC_Eff   HPC_Wc  HPT_Eff    HPT_Wc  LPT_Eff  LPT_Wc
    (-200.0, -60.0, -120.0, -150.0, -300.0, -100.0, 410.0, 150.0, -30.0, 20.0),  # HPC_Tout K (HPT_Eff*)
    (-3000.0, 2000.0, -1500.0, 3000.0, 12400.0, 5000.0, 16000.0, 4000.0, -500.0, 300.0),  # HP_Nmech (HPC*, HPT*)
    (-150.0, -30.0, -80.0, -40.0, -10.0, -5.0, 0.0, 0.0, -5.0, 5.0),  # HPC_Tin K
    (
        -300.0,
        -150.0,
        -400.0,
        -942.0,
        -811.0,
        -250.0,
        -1040.0,
        300.0,
        -150.0,
        200.0,
    ),  # LPT_Tin K (Fan_Wc*, HPC_Eff*, HPT_Eff*)
    (-0.08, -0.04, -0.18, -0.904, -0.202, -0.06, -0.254, 0.05, -0.542, 0.08),  # Fuel kg/s (Fan_Wc*, HPC*, HPT*, LPT*)
    (0.15e6, -0.25e6, 0.10e6, -0.30e6, -0.25e6, -0.40e6, 1.17e6, -0.5e6, -0.05e6, 0.05e6),  # HPC_Pout_st Pa (HPT_Eff*)
    (-250.0, 400.0, -600.0, -2860.0, -150.0, -100.0, -200.0, 150.0, 384.0, 500.0),  # LP_Nmech rpm (Fan_Wc*, LPT_Eff*)
)


@dataclass(frozen=True)
class SimParams:
    """Constants of the engine model. Units in the comments; sources in docs/simulator.md."""

    # --- operating context -------------------------------------------------------------------
    # Healthy cruise values from the challenge's own notebook (one engine, CR, DTAMB ~ 10 K).
    cruise_baseline: tuple[float, ...] = (795.0, 19370.0, 335.0, 1117.0, 0.372, 1.37e6, 3951.0)
    # Climb (MCL) and take-off (MTO) levels as multiples of cruise, per sensor (flat-rated
    # high-bypass turbofan; assumed, tens of percent as DESIGN.md states).
    climb_ratio: tuple[float, ...] = (1.10, 1.04, 1.08, 1.08, 2.10, 1.60, 1.15)
    takeoff_ratio: tuple[float, ...] = (1.16, 1.07, 1.16, 1.13, 3.00, 2.20, 1.26)
    phase_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)  # P(CR), P(MCL), P(MTO) per row
    # DTAMB (K) drawn uniformly per row in a phase-specific range; cruise 9-11 K from the challenge.
    dtamb_low: tuple[float, float, float] = (9.0, 5.0, 0.0)
    dtamb_high: tuple[float, float, float] = (11.0, 15.0, 20.0)
    dtamb_reference: float = 10.0  # K, DTAMB at which the baselines hold
    # Sensor change per K of DTAMB: HPC_Tout, HP_Nmech, LPT_Tin published (2.37, 32.4, 3.73).
    dtamb_sensitivity: tuple[float, ...] = (2.37, 32.4, 1.0, 3.73, 0.0008, -1500.0, 4.0)
    # Measurement noise, one standard deviation per sensor (assumed, ~0.1-0.3 % of level).
    noise_std: tuple[float, ...] = (1.5, 15.0, 0.5, 2.5, 0.002, 3000.0, 5.0)

    # --- health state (ODSMR bounds) -----------------------------------------------------------
    efficiency_bound: float = -0.05  # every Eff deviation lives in [-0.05, 0]
    compressor_flow_bound: float = -0.05  # LPC/Fan/HPC Wc in [-0.05, +0.03]; wear pushes it down
    turbine_flow_bound: float = 0.05  # HPT/LPT Wc in [-0.05, +0.05]; erosion pushes it up
    # Relative propensity of each module (LPC, Fan, HPC, HPT, LPT) to carry an engine's wear:
    # C-MAPSS FD001 degrades the HPC only, N-CMAPSS mostly HPT/LPT; we mix all five.
    module_wear_prior: tuple[float, ...] = (0.3, 0.5, 1.0, 1.0, 0.6)
    flow_to_efficiency_low: float = 0.5  # ratio of a module's Wc wear to its Eff wear, drawn in
    flow_to_efficiency_high: float = 1.0  # [low, high] per module and engine
    manufacturing_std: float = 0.002  # per-deviation manufacturing offset, std (pristine ~ 0)

    # --- degradation: d(damage)/dflight = wear_rate + wear_growth * damage --------------------
    # Its exact solution over j flights, D0 e^{gj} + (r/g)(e^{gj} - 1), is a slow linear phase
    # that turns exponential: the C-MAPSS / N-CMAPSS shape (Saxena et al. 2008).
    initial_damage_low: float = 0.0  # damage in [0, 1]: 0 pristine, 1 = a deviation at its bound
    initial_damage_high: float = 0.10
    wear_rate_low: float = 6e-4  # per flight
    wear_rate_high: float = 1.2e-3
    wear_growth_low: float = 3e-3  # per flight
    wear_growth_high: float = 6e-3

    # --- failure -------------------------------------------------------------------------------
    # EGT proxy: LPT_Tin at take-off; its margin to the limit shrinks with wear. Hazard per flight
    # = hazard_at_limit * exp(-margin / hazard_margin_scale); margin <= 0 or damage >= 1 fails.
    egt_margin_new: float = 90.0  # K, take-off LPT_Tin margin of a pristine engine
    hazard_at_limit: float = 0.05  # per-flight failure probability at zero margin
    hazard_margin_scale: float = 8.0  # K

    # --- maintenance (imperfect repair, Kijima-style) ------------------------------------------
    repair_restore_low: float = 0.5  # a repair removes this fraction of the damage above the
    repair_restore_high: float = 0.9  # floor, drawn uniformly; the floor rises to the result
    repair_growth_penalty: float = 0.10  # each repair multiplies wear_growth by (1 + this)

    # --- money (one currency unit; per-step magnitudes match the challenge server's) ------------
    revenue_per_flight: float = 120.0
    fuel_cost_per_flight: float = 75.0  # at healthy fuel flow; scales with the fuel-flow ratio
    revenue_noise_std: float = 2.0
    repair_cost_base: float = 950.0
    repair_cost_per_damage: float = 400.0  # extra per unit of damage removed
    failure_penalty: float = 10000.0
    salvage_new: float = 150.0  # salvage of a pristine, unflown engine
    salvage_age_scale: float = 1000.0  # flights; salvage decays as exp(-flights / this)
    salvage_repair_factor: float = 0.9  # salvage multiplier per past repair

    def __post_init__(self) -> None:
        for name in ("cruise_baseline", "climb_ratio", "takeoff_ratio", "dtamb_sensitivity", "noise_std"):
            if len(getattr(self, name)) != 7:
                raise ValueError(f"SimParams.{name} needs 7 values (one per sensor), got {len(getattr(self, name))}")
        if abs(sum(self.phase_probs) - 1.0) > 1e-6 or min(self.phase_probs) < 0:
            raise ValueError(
                f"SimParams.phase_probs must be 3 non-negative values summing to 1, got {self.phase_probs}"
            )
        for low, high in (
            ("initial_damage_low", "initial_damage_high"),
            ("wear_rate_low", "wear_rate_high"),
            ("wear_growth_low", "wear_growth_high"),
            ("repair_restore_low", "repair_restore_high"),
            ("flow_to_efficiency_low", "flow_to_efficiency_high"),
        ):
            if not 0 <= getattr(self, low) <= getattr(self, high):
                raise ValueError(
                    f"SimParams needs 0 <= {low} <= {high}, got {getattr(self, low)}, {getattr(self, high)}"
                )
        if self.wear_growth_low <= 0:
            raise ValueError(f"SimParams.wear_growth_low must be > 0, got {self.wear_growth_low}")
        if self.repair_restore_high >= 1:
            raise ValueError(
                f"SimParams.repair_restore_high must be < 1 (repairs are imperfect), got {self.repair_restore_high}"
            )

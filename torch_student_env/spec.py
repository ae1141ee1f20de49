"""Names declared once and shared by the env, the backends, the adapters, the tests and the docs."""

from __future__ import annotations

from enum import IntEnum


class Action(IntEnum):
    """What the operator does before the next flights of an engine."""

    DO_NOTHING = 0  # fly the next flights and earn their profit
    REPAIR = 1  # pay for an imperfect repair, then fly
    SELL = 2  # end the episode for the sale price (a flat 150 on the challenge's server)


class Phase(IntEnum):
    """Flight phase of a row (the challenge's `phase_type`; its server flies cruise only)."""

    CRUISE = 0  # CR
    CLIMB = 1  # MCL, max climb
    TAKEOFF = 2  # MTO, max take-off


NUM_ACTIONS = len(Action)

SENSOR_NAMES: tuple[str, ...] = (
    "HPC_Tout",  # K, HPC exit total temperature
    "HP_Nmech",  # rpm, HP spool speed
    "HPC_Tin",  # K, HPC inlet total temperature
    "LPT_Tin",  # K, LPT inlet total temperature (the EGT proxy)
    "Fuel_flow",  # kg/s
    "HPC_Pout_st",  # Pa, HPC exit static pressure
    "LP_Nmech",  # rpm, LP spool (fan) speed
)
FEATURE_NAMES: tuple[str, ...] = SENSOR_NAMES + ("phase_type", "DTAMB")
NUM_SENSORS = len(SENSOR_NAMES)
NUM_FEATURES = len(FEATURE_NAMES)  # 9, the challenge's row width
PHASE_COLUMN = FEATURE_NAMES.index("phase_type")
DTAMB_COLUMN = FEATURE_NAMES.index("DTAMB")
# Rows inside the library carry one more column after the 9 features: the flight's hidden
# health (the env's `window_health`; zeros when a backend cannot see it).
HEALTH_COLUMN = NUM_FEATURES
ROW_WIDTH = NUM_FEATURES + 1

MAX_STEP_SIZE = 50  # the challenge server's limit on flights per step
DEFAULT_TOKEN = "student_user"  # the challenge client's default user token

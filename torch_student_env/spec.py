"""Names declared once and shared by the env, the backends, the adapters, the tests and the docs."""

from __future__ import annotations

from enum import Enum, IntEnum

import torch


class Action(IntEnum):
    """What the operator does before the next flights of an engine."""

    DO_NOTHING = 0  # fly the next flights and earn their profit
    REPAIR = 1  # pay for an imperfect repair, then fly
    SELL = 2  # end the episode for the sale price (a flat 150 on the challenge's server)


class Phase(IntEnum):
    """Flight phase of a row (the challenge's `phase_type` column). The challenge's server flies
    cruise only: every row reads 0."""

    CRUISE = 0  # CR


class AutoresetMode(str, Enum):
    """When a finished engine starts its next episode: Gymnasium's three modes, by their names.

    - `SAME_STEP` (default): inside the `step` that ends the episode; that step's outputs are
      already the new episode's, and the terminal window is in `final_observation`.
    - `NEXT_STEP`: when the engine is next stepped, and that step flies the fresh engine with
      the action given. This is the challenge server's rule (its client with `auto_reset`).
      Gymnasium's NEXT_STEP instead spends that step on the reset alone and ignores the action.
    - `DISABLED`: never by itself; a finished engine is frozen (stepping it flies nothing,
      earns 0 and repeats its final flags) until `reset(mask=...)`.

    `auto_reset`, a bool, means two things here, and this is the one place that says which: the
    challenge client's `auto_reset` (compat, the server's groups: `client_view.client_env_options`)
    is `NEXT_STEP` when True and `DISABLED` when False; `make_env`'s deprecated `auto_reset=`
    keeps the meaning it had as an option, `SAME_STEP` when True and `DISABLED` when False.
    """

    SAME_STEP = "same_step"
    NEXT_STEP = "next_step"
    DISABLED = "disabled"


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
# The challenge client's other defaults: what a client, a request body or a factory that leaves a
# setting out gets, here as in the seed client.
CLIENT_STEP_SIZE = 10  # flights per step
CLIENT_STEPS_PER_EPISODE = 1000  # the flight limit of an episode
CLIENT_TIMEOUT_S = 30.0  # seconds one HTTP request may take
EPISODES_KEPT_PER_TOKEN = 1000  # finished episodes a leaderboard keeps per user token

# The layout of what `reset` and `step` return, per env: dims are "W" (the window, `history`)
# and "F" (the 9 features); the batch dimension N comes first. Read by the env's contract
# tests and the adapters' specs; `key_shapes` turns it into concrete shapes.
OBSERVATION_KEYS: dict[str, tuple[tuple[str, ...], torch.dtype]] = {
    "observation": (("W", "F"), torch.float32),  # the last W rows, oldest first, zero-padded
    "row": (("F",), torch.float32),  # the newest row
    "flight": (("W",), torch.int64),  # each row's flight index in its episode, -1 = padding
    "valid": (("W",), torch.bool),  # flight >= 0
    # What any player can track from its own actions and the server's flight counter:
    "age": ((), torch.int64),  # flights flown in this episode (the server's `info["step"]`)
    "since_repair": ((), torch.int64),  # flights since the last repair (since the start without one)
    "repairs": ((), torch.int64),  # repairs done in this episode
}
# The keys of `OBSERVATION_KEYS` a player tracks itself (no sensor reading).
PLAYER_KEYS: tuple[str, ...] = ("age", "since_repair", "repairs")
STEP_KEYS: dict[str, tuple[tuple[str, ...], torch.dtype]] = OBSERVATION_KEYS | {
    "reward": ((), torch.float32),
    "terminated": ((), torch.bool),
    "truncated": ((), torch.bool),
    "done": ((), torch.bool),
    "new_rows": ((), torch.int64),  # rows this step flew: the newest of the window (see env)
    "flew": ((), torch.bool),  # flew in this call (in an episode and stepped); False: nothing moved
    "failed_first_flight": ((), torch.bool),  # failed on the step's first flight: flew, but no row
    "return_so_far": ((), torch.float32),  # reward of the engine's current episode so far
    "final_observation": (("W", "F"), torch.float32),  # the window an episode ended with
    "final_valid": (("W",), torch.bool),
    "final_flight": (("W",), torch.int64),
    "final_since_repair": ((), torch.int64),  # with episode_length and episode_repairs: the final counters
    "episode_ended": ((), torch.bool),  # an episode ended in this step; its totals follow
    "episode_return": ((), torch.float32),
    "episode_length": ((), torch.int64),
    "episode_repairs": ((), torch.int64),
    "episode_failed": ((), torch.bool),
}
# The value each player key had when its episode ended, in a step's outputs (the key itself
# is already the next episode's after a same-step restart).
FINAL_PLAYER_KEYS: dict[str, str] = {
    "age": "episode_length",
    "since_repair": "final_since_repair",
    "repairs": "episode_repairs",
}
# The window keys and the key of the window each finished episode ended with, in a step's outputs
# (the window key itself shows the next episode's first row after a same-step restart).
FINAL_WINDOW_KEYS: dict[str, str] = {
    "observation": "final_observation",
    "valid": "final_valid",
    "flight": "final_flight",
}
# Left out of `step`'s outputs by `make_env(final_observation=False)`.
FINAL_KEYS: tuple[str, ...] = (*FINAL_WINDOW_KEYS.values(), "final_since_repair")
PRIVILEGED_KEYS: dict[str, tuple[tuple[str, ...], torch.dtype]] = {
    "health": ((), torch.float32),
    "wear_rate": ((), torch.float32),
    "window_health": (("W",), torch.float32),
}


def key_shapes(
    keys: dict[str, tuple[tuple[str, ...], torch.dtype]], num_envs: int, history: int
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Concrete `(shape, dtype)` of each key for `num_envs` engines and a window of `history`."""
    sizes = {"W": history, "F": NUM_FEATURES}
    return {key: ((num_envs, *(sizes[d] for d in dims)), dtype) for key, (dims, dtype) in keys.items()}

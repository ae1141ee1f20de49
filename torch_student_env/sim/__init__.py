"""The embedded turbofan simulator: pure batched torch, device-agnostic, float32.

`params` holds every constant of the model, `rng` the counter-based random numbers, `engine` the
state and the reset / advance kernels. `docs/simulator.md` gives the equations and sources.
"""

from torch_student_env.sim.engine import EngineState, Transition, advance, reset_engines
from torch_student_env.sim.params import SimParams

__all__ = ["EngineState", "SimParams", "Transition", "advance", "reset_engines"]

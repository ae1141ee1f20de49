"""The embedded turbofan simulator: pure batched torch, device-agnostic, float32.

`params` holds every constant of the model, `rng` the counter-based random numbers, `engine` the
state and the reset / advance kernels. Nothing here imports from above `sim/` except the
leaf modules `spec` (names) and `types` (`Transition`). `docs/simulator.md` gives the
equations and sources.
"""

from torch_student_env.sim.engine import EngineState, SimTables, advance, reset_engines, restart_engines, sim_step
from torch_student_env.sim.params import SimParams

__all__ = ["EngineState", "SimParams", "SimTables", "advance", "reset_engines", "restart_engines", "sim_step"]

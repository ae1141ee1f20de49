"""torch_student_env: a PyTorch-native batched RL environment for turbofan-engine maintenance.

>>> env = make_env(num_envs=4, step_size=10, seed=0)
>>> td = env.reset()                      # TensorDict, batch_size=[4]
>>> td = env.step(torch.zeros(4, dtype=torch.long))
"""

from torch_student_env.config import EnvConfig, normalize_device
from torch_student_env.env import TorchStudentEnv
from torch_student_env.make import make_env
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import FEATURE_NAMES, SENSOR_NAMES, Action, Phase

__version__ = "0.1.0"


def _register_with_gymnasium() -> None:
    """`gymnasium.make("TorchStudentEnv-v0")` / `make_vec(...)` work once this package is imported."""
    import importlib.util

    if importlib.util.find_spec("gymnasium") is not None:
        from torch_student_env.adapters.gymnasium import register_envs

        register_envs()


_register_with_gymnasium()

__all__ = [
    "FEATURE_NAMES",
    "SENSOR_NAMES",
    "Action",
    "EnvConfig",
    "Phase",
    "SimParams",
    "TorchStudentEnv",
    "make_env",
    "normalize_device",
]

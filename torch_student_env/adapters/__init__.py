"""Thin adapters to other RL frameworks; each module imports its framework lazily.

- `adapters.torchrl`: `TorchRLStudentEnv`, a TorchRL `EnvBase` ([torchrl] extra);
- `adapters.gymnasium`: `GymnasiumVectorEnv` (Gymnasium 1.x `VectorEnv`) and `SB3VecEnv`
  (Stable-Baselines3 `VecEnv`) ([gym] extra).
"""


def require(module: str, extra: str):
    """Import `module` or raise an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed: pip install 'torch-student-env[{extra}]'") from err

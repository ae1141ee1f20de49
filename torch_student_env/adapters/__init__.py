"""Thin adapters to other RL frameworks; each module imports its framework lazily.

- `adapters.torchrl`: `TorchRLStudentEnv`, a TorchRL `EnvBase` ([torchrl] extra);
- `adapters.gymnasium`: `GymnasiumVectorEnv` (Gymnasium 1.x `VectorEnv`) ([gym] extra);
- `adapters.sb3`: `SB3VecEnv` (Stable-Baselines3 `VecEnv`) ([sb3] extra).
"""


def worker_env_offset(num_envs: int) -> int:
    """The default `env_offset` of an adapter: `k * num_envs` in the k-th worker process.

    Multi-process collectors (TorchRL's, Gymnasium's async vector env, SB3's SubprocVecEnv) build
    every worker from the same factory; without this, workers with the same seed would step
    identical engines. `multiprocessing` numbers the children of a process 1, 2, ...; the main
    process keeps offset 0, so a single-process run is unchanged. Pass `env_offset=` to choose.
    """
    import multiprocessing

    identity = multiprocessing.current_process()._identity  # () in the main process
    return identity[-1] * num_envs if identity else 0


def require(module: str, extra: str):
    """Import `module` or raise an ImportError that names the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed: pip install 'torch-student-env[{extra}]'") from err

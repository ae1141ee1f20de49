"""`make_env`: one call to build a `TorchStudentEnv` on the embedded simulator or a remote server."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from torch_student_env.backends.base import Backend
from torch_student_env.config import EnvConfig
from torch_student_env.env import TorchStudentEnv
from torch_student_env.sim.params import SimParams
from torch_student_env.spec import CLIENT_STEP_SIZE, CLIENT_STEPS_PER_EPISODE

BACKENDS = ("local", "remote")


def make_env(
    num_envs: int = 4,
    step_size: int = CLIENT_STEP_SIZE,
    *,
    history: int | None = None,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    backend: str = "local",
    autoreset_mode: str = "same_step",
    privileged: bool = False,
    max_steps_per_episode: int = CLIENT_STEPS_PER_EPISODE,
    validate_actions: bool = True,
    fast: bool | None = None,
    wait_compiled: bool | None = None,
    env_offset: int = 0,
    final_observation: bool = True,
    sim_params: SimParams | None = None,
    sim_variants: str | Mapping[str, SimParams] | Sequence[SimParams] | None = None,
    auto_reset: bool | None = None,
    **remote_options: Any,
) -> TorchStudentEnv:
    """Build a batched env of `num_envs` engines.

    `backend="local"` (default) runs the embedded simulator on `device`; `backend="remote"`
    speaks the challenge's HTTP protocol (`server_url=`, `user_token=`, see `backends.remote`).
    See `EnvConfig` for the meaning of each setting. `sim_variants` draws each episode's model
    from an ensemble: a name from `sim.variants.ENSEMBLES` ("plausible"), or `SimParams` (a
    sequence, or a mapping of names to them); it excludes `sim_params`.

    `auto_reset` is the deprecated spelling of `autoreset_mode`: True is "same_step", False
    "disabled" (what it meant when it was the option; the challenge client's `auto_reset` means
    "next_step": `spec.AutoresetMode`).
    """
    if auto_reset is not None:
        autoreset_mode = _from_auto_reset(auto_reset, autoreset_mode)
    variants: tuple[SimParams, ...] = ()
    if sim_variants is not None:
        if sim_params is not None:
            raise ValueError("pass sim_params or sim_variants, not both")
        if backend != "local":
            raise ValueError(
                f"sim_variants applies to the embedded simulator (backend='local'), got backend={backend!r}"
            )
        from torch_student_env.sim.variants import resolve

        variants = tuple(resolve(sim_variants).values())
    config = EnvConfig(
        num_envs=num_envs,
        step_size=step_size,
        history=history,
        max_steps_per_episode=max_steps_per_episode,
        autoreset_mode=autoreset_mode,
        privileged=privileged,
        device=device,
        seed=seed,
        validate_actions=validate_actions,
        fast=fast,
        wait_compiled=wait_compiled,
        env_offset=env_offset,
        final_observation=final_observation,
        sim_params=sim_params if sim_params is not None else SimParams(),
        sim_variants=variants,
    )
    return TorchStudentEnv(config, _backend(config, backend, remote_options))


def _backend(config: EnvConfig, backend: str, remote_options: dict[str, Any]) -> Backend:
    """The `Backend` named by `backend` for `config`: the embedded simulator or a remote server."""
    if backend == "local":
        if remote_options:
            raise TypeError(f"options {sorted(remote_options)} only apply to backend='remote'")
        from torch_student_env.backends.local import LocalBackend

        return LocalBackend(
            config.num_envs,
            config.device,
            config.max_steps_per_episode,
            config.models,
            config.seed,
            env_offset=config.env_offset,
        )
    if backend == "remote":
        from torch_student_env.backends.remote import RemoteBackend

        return RemoteBackend(config, **remote_options)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _from_auto_reset(auto_reset: bool, autoreset_mode: str) -> str:
    """The `autoreset_mode` a deprecated `auto_reset=` stands for, with its DeprecationWarning."""
    if not isinstance(auto_reset, bool):
        raise TypeError(f"auto_reset must be a bool, got {auto_reset!r}; it is deprecated: use autoreset_mode=")
    meant = "same_step" if auto_reset else "disabled"
    if autoreset_mode != "same_step":
        raise TypeError(f"pass autoreset_mode={autoreset_mode!r} or auto_reset={auto_reset}, not both")
    warnings.warn(
        f"make_env(auto_reset={auto_reset}) is deprecated: use autoreset_mode={meant!r} "
        "(the modes: 'same_step', 'next_step' (the challenge server's), 'disabled')",
        DeprecationWarning,
        stacklevel=3,
    )
    return meant

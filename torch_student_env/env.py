"""`TorchStudentEnv`: N engines stepped together, TensorDict batches out, auto-reset inside `step`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from numbers import Integral
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from torch_student_env.backends.base import Backend
from torch_student_env.config import (
    EnvConfig,
    check_seed,
    check_state_keys,
    check_state_tensor,
    check_step_size,
    same_device,
)
from torch_student_env.eager import below_autograd
from torch_student_env.spec import HEALTH_COLUMN, NUM_ACTIONS, NUM_FEATURES, ROW_WIDTH, Action
from torch_student_env.types import Transition
from torch_student_env.window import push_rows


@dataclass(frozen=True)
class EpisodeBuffers:
    """What the env keeps per engine between steps (the backend keeps the engines themselves).

    Engines are the last dimension, as in the simulator (see `EngineState`): the window is
    (10, W, N), and the (N, W, 9) observation handed out is a permuted view of it.
    """

    window: torch.Tensor  # (10, W, N) float32: the 9 features + hidden health of the last W rows
    window_flight: torch.Tensor  # (W, N) int64: flight index of each row, -1 = padding; oldest first
    active: torch.Tensor  # (N,) bool: in an episode (False: finished, awaiting reset(mask=))
    last_terminated: torch.Tensor  # (N,) bool: flags that frozen engines repeat
    last_truncated: torch.Tensor  # (N,) bool
    return_so_far: torch.Tensor  # (N,) float32: reward of the running episode


def empty_buffers(num_envs: int, history: int, device: torch.device) -> EpisodeBuffers:
    """Buffers before the first reset: padding everywhere, no engine active."""
    flags = torch.zeros(num_envs, dtype=torch.bool, device=device)
    return EpisodeBuffers(
        window=torch.zeros(ROW_WIDTH, history, num_envs, device=device),
        window_flight=torch.full((history, num_envs), -1, dtype=torch.int64, device=device),
        active=flags,
        last_terminated=flags,
        last_truncated=flags,
        return_so_far=torch.zeros(num_envs, device=device),
    )


def restart_episodes(buffers: EpisodeBuffers, mask: torch.Tensor, first_rows: torch.Tensor) -> EpisodeBuffers:
    """Masked engines get a fresh window (padding, then their reset row, flight 0) and bookkeeping.

    `first_rows` (N, 10) as the backend returns them.
    """
    window, window_flight = buffers.window, buffers.window_flight
    # Selects on the slot index rather than a concatenated fresh window: nothing extra to allocate.
    newest = torch.arange(window.shape[1], device=window.device).unsqueeze(1) == window.shape[1] - 1  # (W, 1)
    fresh = torch.where(newest, first_rows.T.unsqueeze(1), 0.0)  # (10, W, N)
    return EpisodeBuffers(
        window=torch.where(mask, fresh, window),
        window_flight=torch.where(mask, torch.where(newest, 0, -1), window_flight),
        active=buffers.active | mask,
        last_terminated=buffers.last_terminated & ~mask,
        last_truncated=buffers.last_truncated & ~mask,
        return_so_far=torch.where(mask, 0.0, buffers.return_so_far),
    )


def window_step(
    buffers: EpisodeBuffers, transition: Transition, first_rows: torch.Tensor | None, final_observation: bool = True
) -> tuple[EpisodeBuffers, dict[str, torch.Tensor]]:
    """The env's side of a step: push the flown rows, build the step outputs, restart the ended.

    `first_rows` (N, 10) are the backend's fresh episodes (auto-reset), or None to freeze the
    ended engines instead (the same thing when none ended). `final_observation=False` leaves out
    the `FINAL_KEYS`. A pure function of tensors, so the fast path compiles it whole.
    """
    active = buffers.active
    n_new = transition.row_flown.sum(1)
    window = push_rows(buffers.window, transition.rows.permute(2, 1, 0), n_new)
    window_flight = push_rows(buffers.window_flight.unsqueeze(0), transition.row_flight.T.unsqueeze(0), n_new)[0]
    # Frozen engines (auto_reset=False) repeat their final flags with zero reward.
    terminated = torch.where(active, transition.terminated, buffers.last_terminated)
    truncated = torch.where(active, transition.truncated, buffers.last_truncated)
    reward = torch.where(active, transition.reward, 0.0)
    ended = transition.ended(active)  # finished in this call
    return_so_far = buffers.return_so_far + reward
    out = {
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
        "done": terminated | truncated,
        "episode_return": torch.where(ended, return_so_far, 0.0),
        "episode_length": torch.where(ended, transition.flights, 0),
        "episode_repairs": torch.where(ended, transition.repairs, 0),
        "episode_failed": ended & transition.failed,
    }
    if final_observation:  # by far the largest outputs: (N, W, 9) written every step, mostly zeros
        out["final_observation"] = torch.where(ended, window[:NUM_FEATURES], 0.0).permute(2, 1, 0)
        out["final_valid"] = (ended & (window_flight >= 0)).T
        out["final_flight"] = torch.where(ended, window_flight, -1).T
    buffers = EpisodeBuffers(
        window=window,
        window_flight=window_flight,
        active=active if first_rows is not None else active & ~ended,
        last_terminated=terminated,
        last_truncated=truncated,
        return_so_far=torch.where(ended, 0.0, return_so_far),
    )
    if first_rows is not None:
        buffers = restart_episodes(buffers, ended, first_rows)
    return buffers, out


StepFn = Callable[[EpisodeBuffers, torch.Tensor, int], tuple[EpisodeBuffers, dict[str, torch.Tensor]]]


def _pure_step(kernel, constants, sim, buffers, actions, step_size, auto_reset, final_observation):
    """A backend's pure kernel, then `window_step`: the whole step as a function of tensors."""
    sim, transition, first_rows = kernel(sim, actions, buffers.active, step_size, auto_reset, *constants)
    return (sim, *window_step(buffers, transition, first_rows, final_observation))


def _pure_step_cpu(*args):
    """`_pure_step` under its own name, so that the CPU build below has its own compile cache."""
    return _pure_step(*args)


# One compiled function for every fast env: envs of the same shapes and constants share its graph
# (dynamo guards on the kernel, the shapes and the constants' values, not on the env). On CPU the
# graph is called through a C++ wrapper instead of inductor's Python one: 93 -> 79 us per step at
# N = 4, for the same compile time (measured cold: 22.5 s against 23.7 s).
_compiled_step = torch.compile(_pure_step, dynamic=False)
_compiled_step_cpu = torch.compile(_pure_step_cpu, dynamic=False, options={"cpp_wrapper": True})
# Each distinct (num_envs, step_size, history, device, params, options) is one graph; dynamo's default of 8
# per function would silently fall back to eager after 8 configurations in one process.
FAST_PATH_GRAPHS = 64


def compose_step(backend: Backend, auto_reset: bool, fast: bool, final_observation: bool = True) -> StepFn:
    """The whole step, `(buffers, actions, step_size) -> (buffers, outputs)`: the backend's
    transition (with the resets of ended engines when `auto_reset`), then `window_step`.

    A backend with a pure kernel (the embedded simulator) is composed as one pure function of
    tensors, compiled into one graph when `fast`: the simulator's state goes in and out
    explicitly. Others (the remote backend) run their transition eagerly.
    """
    kernel = backend.kernel
    if kernel is None:

        def eager_step(buffers, actions, step_size):
            transition, first_rows = backend.transition(actions, buffers.active, step_size, auto_reset)
            with below_autograd():
                return window_step(buffers, transition, first_rows, final_observation)

        return eager_step

    if fast:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, FAST_PATH_GRAPHS)
    graph = (_compiled_step_cpu if backend.device.type == "cpu" else _compiled_step) if fast else _pure_step
    constants = backend.kernel_constants()
    dispatch = contextlib.nullcontext if fast else below_autograd  # one compiled call has no per-op cost

    def kernel_step(buffers, actions, step_size):
        args = (kernel, constants, backend.sim, buffers, actions, step_size, auto_reset, final_observation)
        with dispatch():
            backend.sim, buffers, out = graph(*args)
        return buffers, out

    return kernel_step


def _features(window: torch.Tensor) -> torch.Tensor:
    """The (N, W, 9) feature view of a (10, W, N) window buffer."""
    return window[:NUM_FEATURES].permute(2, 1, 0)


class TorchStudentEnv:
    """A batch of `num_envs` turbofan engines under one policy.

    Each `step(actions)` applies one action per engine (`Action`: 0 do nothing, 1 repair, 2 sell)
    and flies up to `step_size` flights. Outputs are `TensorDict`s with batch size `[N]` on
    `device`; W is `history` (default `step_size`), F = 9 features:

    - `observation` (N, W, F) float32: the last W flight rows, oldest first, zero-padded;
    - `row` (N, F) float32: the newest row; `flight` (N, W) int64: each row's flight index in its
      episode (0 = the reading returned by reset, -1 = padding); `valid` (N, W) bool = flight >= 0;
    - from `step` only: `reward` (N,) float32; `terminated`, `truncated`, `done` (N,) bool, about
      the transition just taken even if the env was auto-reset in the same call;
      `final_observation` (N, W, F) / `final_valid` / `final_flight` (N, W): the window each
      finished episode ended with (zeros / False / -1 elsewhere); `episode_return` (N,) float32,
      `episode_length` (N,) int64 (flights), `episode_repairs` (N,) int64 and `episode_failed`
      (N,) bool: totals of the episodes that ended in this call (0 / False elsewhere);
    - with `privileged=True`: `health` (N,) float32, the hidden health of the current engines
      (the profit of their next flight as a share of a just-repaired engine's: 1 after a repair,
      failures come as it nears 0), `wear_rate` (N,) float32 (health lost per flight),
      `repairs` (N,) int64, and `window_health` (N, W), the health of each window row.

    With `auto_reset=True` (default) finished engines start a new episode inside `step`; with
    `auto_reset=False` they stay frozen: stepping them is a no-op that repeats their final flags
    with reward 0, until `reset(mask=...)` restarts them.

    Memory layout: engines are the innermost dimension of every buffer (that is what vectorises
    the simulator), so the per-window outputs are permuted views, not contiguous (N, W, F)
    tensors. Indexing, arithmetic, `copy_` and TensorDict ops take them as they are; call
    `.contiguous()` before `.view()`. Outputs are never written in place: a returned tensor keeps
    its values after later steps.
    """

    def __init__(self, config: EnvConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_envs = config.num_envs
        self.step_size = config.step_size
        self.history = config.history
        self.device = config.device
        self._buffers = empty_buffers(self.num_envs, self.history, self.device)
        self._step = compose_step(backend, config.auto_reset, config.fast, config.final_observation)
        self._batch_size = torch.Size([self.num_envs])
        self._seed = config.seed
        self._has_reset = False

    # ------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        """The root seed of the current episodes (env i's episode k depends on it, i and k)."""
        return self._seed

    def reset(self, seed: int | None = None, mask: torch.Tensor | np.ndarray | list | None = None) -> TensorDict:
        """Start new episodes: all engines (optionally reseeded), or only those in `mask` (N,) bool.

        Returns the observation keys (and privileged keys) for all N engines; engines outside
        `mask` keep their windows.
        """
        if mask is not None and seed is not None:
            raise ValueError("reset(seed=...) reseeds every engine; it cannot be combined with mask=")
        if mask is None:
            if seed is not None:
                self.backend.seed(check_seed(seed))  # validated before anything changes
                self._seed = seed
            reset_mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            if not self._has_reset:
                raise RuntimeError("call reset() once for all engines before resetting a subset with mask=")
            reset_mask = self._as_mask(mask)
        first_rows = self.backend.reset(None if mask is None else reset_mask)
        self._buffers = restart_episodes(self._buffers, reset_mask, first_rows)
        self._has_reset = True
        return self._observation_td()

    def step(self, actions: torch.Tensor | np.ndarray | list, step_size: int | None = None) -> TensorDict:
        """Apply `actions` (N,) ints in {0, 1, 2} and fly up to `step_size` flights per engine.

        Inputs are validated before anything changes: a rejected call leaves the env untouched.
        """
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        step_size = self.step_size if step_size is None else check_step_size(step_size)
        actions = self._as_actions(actions)
        self._buffers, out = self._step(self._buffers, actions, step_size)
        return self._observation_td(out)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the whole env (backend, windows, counters) to resume exactly."""
        if not self._has_reset:
            raise RuntimeError("call reset() before state_dict(): there is no state to save yet")
        return {
            "num_envs": self.num_envs,
            "history": self.history,
            "seed": self._seed,
            **{name: value.clone() for name, value in asdict(self._buffers).items()},
            "backend": self.backend.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from an env with the same `num_envs` and `history`.

        Atomic: every entry is checked (keys, shapes, dtypes, finite values, the seed) before
        anything changes, so a rejected checkpoint leaves the env as it was.
        """
        buffer_names = {f.name for f in fields(EpisodeBuffers)}
        check_state_keys("checkpoint", state, {"num_envs", "history", "seed", "backend"} | buffer_names)
        for name in ("num_envs", "history"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpoint has {name}={state[name]}, this env has {name}={getattr(self, name)}")
        seed = check_seed(state["seed"])
        buffers = EpisodeBuffers(
            **{
                name: check_state_tensor(name, state[name], getattr(self._buffers, name)).to(self.device).clone()
                for name in buffer_names
            }
        )
        self.backend.load_state_dict(state["backend"])  # validates its own part first, then swaps
        self._seed, self._buffers, self._has_reset = seed, buffers, True

    def close(self) -> None:
        """Release the backend's resources (connections of a remote backend)."""
        self.backend.close()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"TorchStudentEnv(num_envs={c.num_envs}, step_size={c.step_size}, history={c.history}, "
            f"device={c.device}, backend={type(self.backend).__name__}, auto_reset={c.auto_reset})"
        )

    # ------------------------------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------------------------------
    def _observation_td(self, step_outputs: dict[str, torch.Tensor] | None = None) -> TensorDict:
        """The observation keys (and privileged keys, and `step_outputs`) as one TensorDict."""
        window, window_flight = self._buffers.window, self._buffers.window_flight
        valid = window_flight >= 0
        data = {
            "observation": _features(window),
            "row": window[:NUM_FEATURES, -1].T,
            "flight": window_flight.T,
            "valid": valid.T,
        }
        if self.config.privileged:
            data.update(self.backend.privileged())
            data["window_health"] = torch.where(valid, window[HEALTH_COLUMN], 0.0).T
        data.update(step_outputs or {})
        # Every tensor here was made by the env on its device with the batch dimension first, so
        # the constructor's checks (about 12 us a call, a tenth of a small step) are skipped.
        return TensorDict._new_unsafe(source=data, batch_size=self._batch_size, device=self.device)

    def _as_mask(self, mask: torch.Tensor | np.ndarray | list) -> torch.Tensor:
        if isinstance(mask, torch.Tensor):
            if not same_device(mask.device, self.device):
                raise ValueError(f"mask is on {mask.device}, the env is on {self.device}: move it with .to(env.device)")
            tensor = mask
        else:
            tensor = torch.as_tensor(np.asarray(mask))
        if tensor.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor/array of shape ({self.num_envs},), got dtype {tensor.dtype}")
        if tensor.shape != (self.num_envs,):
            raise ValueError(f"mask must have shape ({self.num_envs},), got {tuple(tensor.shape)}")
        return tensor.to(self.device)

    def _as_actions(self, actions: torch.Tensor | np.ndarray | list) -> torch.Tensor:
        """Validate and convert actions to an int64 tensor on the env's device, or raise."""
        if isinstance(actions, torch.Tensor):
            if not same_device(actions.device, self.device):
                raise ValueError(
                    f"actions are on {actions.device}, the env is on {self.device}: move them with .to(env.device)"
                )
            if actions.dtype == torch.bool or actions.dtype.is_floating_point or actions.dtype.is_complex:
                raise TypeError(f"actions must be integers, got a tensor of dtype {actions.dtype}")
            tensor = actions
        elif isinstance(actions, (np.ndarray, list, tuple)):
            array = np.asarray(actions)
            if array.dtype.kind not in "iu":
                if array.dtype == object and all(
                    isinstance(a, Integral) and not isinstance(a, bool) for a in array.flat
                ):
                    array = array.astype(np.int64)
                else:
                    raise TypeError(f"actions must be integers, got values of dtype {array.dtype}: {actions!r}"[:300])
            tensor = torch.as_tensor(array.astype(np.int64, copy=False))
        else:
            raise TypeError(
                f"actions must be a tensor, numpy array or list of {self.num_envs} ints, got {type(actions).__name__}"
            )
        if tensor.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {tuple(tensor.shape)}")
        if self.config.validate_actions:
            # On CUDA this check reads one bool back (a sync); pass validate_actions=False to skip.
            bad = (tensor < 0) | (tensor >= NUM_ACTIONS)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                names = ", ".join(f"{a.value}={a.name}" for a in Action)
                raise ValueError(f"actions must be in {{{names}}}, got {int(tensor[i])} for env {i}")
        return tensor.to(device=self.device, dtype=torch.int64)

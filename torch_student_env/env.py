"""`TorchStudentEnv`: N engines stepped together, TensorDict batches out, auto-reset inside `step`."""

from __future__ import annotations

from numbers import Integral
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from torch_student_env.backends.base import Backend
from torch_student_env.config import EnvConfig, check_seed, check_step_size
from torch_student_env.sim.engine import ROW_WIDTH
from torch_student_env.spec import NUM_ACTIONS, NUM_FEATURES, Action

_HEALTH_COLUMN = NUM_FEATURES  # the window buffer's 10th column: hidden health of each row


def push_rows(
    window: torch.Tensor, window_flight: torch.Tensor, rows: torch.Tensor, row_flight: torch.Tensor, n_new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Append each engine's first `n_new[i]` rows to its window and keep the newest W.

    `window` (N, W, C) / `window_flight` (N, W), oldest first; `rows` (N, K, C) / `row_flight`
    (N, K), whose first n_new[i] are real. One index, two gathers, no loop over engines.
    """
    width = window.shape[1]
    index = n_new.unsqueeze(1) + torch.arange(width, device=window.device)  # (N, W) into W + K
    flights = torch.cat((window_flight, row_flight), dim=1).gather(1, index)
    combined = torch.cat((window, rows), dim=1)
    return combined.gather(1, index.unsqueeze(-1).expand(-1, -1, combined.shape[-1])), flights


def restart_windows(
    mask: torch.Tensor, first_rows: torch.Tensor, window: torch.Tensor, window_flight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked engines get a fresh window: padding, then their reset row (flight 0)."""
    fresh = torch.cat((torch.zeros_like(window[:, 1:]), first_rows.unsqueeze(1)), dim=1)
    fresh_flight = torch.cat((torch.full_like(window_flight[:, 1:], -1), torch.zeros_like(window_flight[:, :1])), dim=1)
    return torch.where(mask[:, None, None], fresh, window), torch.where(mask[:, None], fresh_flight, window_flight)


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
    - with `privileged=True`: `health`, `health_cap` (N,), `health_params` (N, 10) of the current
      engines and `window_health` (N, W), the health of each window row.

    With `auto_reset=True` (default) finished engines start a new episode inside `step`; with
    `auto_reset=False` they stay frozen: stepping them is a no-op that repeats their final flags
    with reward 0, until `reset(mask=...)` restarts them.
    """

    def __init__(self, config: EnvConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_envs = config.num_envs
        self.step_size = config.step_size
        self.history = config.history
        self.device = config.device
        n, w = self.num_envs, self.history
        self._window = torch.zeros(n, w, ROW_WIDTH, device=self.device)  # rows + hidden health
        self._window_flight = torch.full((n, w), -1, dtype=torch.int64, device=self.device)
        self._active = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._last_terminated = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._last_truncated = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._return_so_far = torch.zeros(n, device=self.device)
        # The window kernels are compiled with the simulator's when the fast path is on.
        self._push = torch.compile(push_rows, dynamic=False) if config.fast else push_rows
        self._restart = torch.compile(restart_windows, dynamic=False) if config.fast else restart_windows
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
                self._seed = check_seed(seed)
                self.backend.seed(seed)
            reset_mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            if not self._has_reset:
                raise RuntimeError("call reset() once for all engines before resetting a subset with mask=")
            reset_mask = self._as_mask(mask)
        first_rows = self.backend.reset(None if mask is None else reset_mask)
        self._start_episodes(reset_mask, first_rows)
        self._has_reset = True
        return self._observation_td()

    def step(self, actions: torch.Tensor | np.ndarray | list, step_size: int | None = None) -> TensorDict:
        """Apply `actions` (N,) ints in {0, 1, 2} and fly up to `step_size` flights per engine.

        Inputs are validated before anything changes: a rejected call leaves the env untouched.
        """
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        n_rows = self.step_size if step_size is None else check_step_size(step_size)
        actions = self._as_actions(actions)

        tr = self.backend.advance(actions, self._active, n_rows)
        n_new = tr.row_flown.sum(dim=1)
        window, window_flight = self._push(self._window, self._window_flight, tr.rows, tr.row_flight, n_new)

        # Frozen engines (auto_reset=False) repeat their final flags with zero reward.
        terminated = torch.where(self._active, tr.terminated, self._last_terminated)
        truncated = torch.where(self._active, tr.truncated, self._last_truncated)
        reward = torch.where(self._active, tr.reward, 0.0)
        ended = self._active & (tr.terminated | tr.truncated)  # finished in this call
        self._return_so_far = self._return_so_far + reward

        out = {
            "reward": reward,
            "terminated": terminated,
            "truncated": truncated,
            "done": terminated | truncated,
            "final_observation": torch.where(ended[:, None, None], window[..., :NUM_FEATURES], 0.0),
            "final_valid": ended[:, None] & (window_flight >= 0),
            "final_flight": torch.where(ended[:, None], window_flight, -1),
            "episode_return": torch.where(ended, self._return_so_far, 0.0),
            "episode_length": torch.where(ended, tr.flights, 0),
            "episode_repairs": torch.where(ended, tr.repairs, 0),
            "episode_failed": ended & tr.failed,
        }
        self._window, self._window_flight = window, window_flight
        self._last_terminated, self._last_truncated = terminated, truncated
        self._return_so_far = torch.where(ended, 0.0, self._return_so_far)
        if self.config.auto_reset:
            self._start_episodes(ended, self.backend.reset(ended))
        else:
            self._active = self._active & ~ended
        td = self._observation_td()
        td.update(out)
        return td

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint of the whole env (backend, windows, counters) to resume exactly."""
        if not self._has_reset:
            raise RuntimeError("call reset() before state_dict(): there is no state to save yet")
        return {
            "num_envs": self.num_envs,
            "history": self.history,
            "seed": self._seed,
            "window": self._window.clone(),
            "window_flight": self._window_flight.clone(),
            "active": self._active.clone(),
            "last_terminated": self._last_terminated.clone(),
            "last_truncated": self._last_truncated.clone(),
            "return_so_far": self._return_so_far.clone(),
            "backend": self.backend.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken from an env with the same `num_envs` and `history`."""
        for name in ("num_envs", "history"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpoint has {name}={state[name]}, this env has {name}={getattr(self, name)}")
        self.backend.load_state_dict(state["backend"])
        self._seed = state["seed"]
        for name in ("window", "window_flight", "active", "last_terminated", "last_truncated", "return_so_far"):
            setattr(self, f"_{name}", state[name].to(self.device).clone())
        self._has_reset = True

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
    def _start_episodes(self, mask: torch.Tensor, first_rows: torch.Tensor) -> None:
        """Give the masked engines a fresh window and clear their episode bookkeeping."""
        self._window, self._window_flight = self._restart(mask, first_rows, self._window, self._window_flight)
        self._active = self._active | mask
        self._last_terminated = self._last_terminated & ~mask
        self._last_truncated = self._last_truncated & ~mask
        self._return_so_far = torch.where(mask, 0.0, self._return_so_far)

    def _observation_td(self) -> TensorDict:
        valid = self._window_flight >= 0
        data = {
            "observation": self._window[..., :NUM_FEATURES],
            "row": self._window[:, -1, :NUM_FEATURES],
            "flight": self._window_flight,
            "valid": valid,
        }
        if self.config.privileged:
            data.update(self.backend.privileged())
            data["window_health"] = torch.where(valid, self._window[..., _HEALTH_COLUMN], 0.0)
        return TensorDict(data, batch_size=[self.num_envs], device=self.device)

    def _as_mask(self, mask: torch.Tensor | np.ndarray | list) -> torch.Tensor:
        if isinstance(mask, torch.Tensor):
            if mask.device != self.device:
                raise ValueError(f"mask is on {mask.device}, the env is on {self.device}")
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
            if actions.device != self.device:
                raise ValueError(f"actions are on {actions.device}, the env is on {self.device}: move them with .to()")
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

"""`TorchStudentEnv`: N engines stepped together, TensorDict batches out, auto-reset inside `step`.

The public API: validation, the TensorDict outputs, checkpoints. The episode rules are pure
functions in `episode`; how a step runs (eager, compiled) is `fast_path`'s choice.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from numbers import Integral
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict

from torch_student_env.backends.base import Backend
from torch_student_env.config import (
    MAX_ENV_OFFSET,
    MAX_SEED,
    EnvConfig,
    check_seed,
    check_state_keys,
    check_state_tensor,
    check_step_size,
    same_device,
)
from torch_student_env.episode import EpisodeBuffers, empty_buffers, restart_episodes
from torch_student_env.fast_path import CompiledStep, compose_step
from torch_student_env.spec import HEALTH_COLUMN, NUM_ACTIONS, NUM_FEATURES, Action, AutoresetMode


def _features(window: torch.Tensor) -> torch.Tensor:
    """The (N, W, 9) feature view of an (N, W, 10) window buffer."""
    return window[..., :NUM_FEATURES]


class TorchStudentEnv:
    """A batch of `num_envs` turbofan engines under one policy.

    Each `step(actions)` applies one action per engine (`Action`: 0 do nothing, 1 repair, 2 sell)
    and flies up to `step_size` flights. Outputs are `TensorDict`s with batch size `[N]` on
    `device`; W is `history` (default `step_size`), F = 9 features:

    - `observation` (N, W, F) float32: the last W flight rows, oldest first, zero-padded;
    - `row` (N, F) float32: the newest row; `flight` (N, W) int64: each row's flight index in its
      episode (0 = the reading returned by reset, -1 = padding); `valid` (N, W) bool = flight >= 0;
    - the player-side counters (`spec.PLAYER_KEYS`), (N,) int64, which any client of the real
      server can track from its actions and the server's flight counter: `age` (flights flown
      in this episode), `since_repair` (flights since the last repair, or the start) and
      `repairs` (repairs done in this episode);
    - from `step` only: `reward` (N,) float32; `terminated`, `truncated`, `done` (N,) bool, about
      the transition just taken even if the env was auto-reset in the same call; `new_rows` (N,)
      int64: how many rows this step flew, which are the newest `new_rows` rows of the window
      (of `final_observation` for an episode that ended and restarted in this call);
      `return_so_far` (N,) float32, the current episode's reward;
      `final_observation` (N, W, F) / `final_valid` / `final_flight` (N, W): the window each
      finished episode ended with (zeros / False / -1 elsewhere), and `final_since_repair` (N,)
      its last counter (its age and repairs are `episode_length`, `episode_repairs`);
      `episode_ended` (N,) bool, and
      `episode_return` (N,) float32, `episode_length` (N,) int64 (flights), `episode_repairs`
      (N,) int64 and `episode_failed` (N,) bool: totals of the episodes that ended in this call
      (0 / False elsewhere);
    - with `privileged=True`: `health` (N,) float32, the hidden health of the current engines
      (the profit of their next flight as a share of a just-repaired engine's: 1 after a repair;
      failures follow a safety state that wears at the segment's mean rate, docs/simulator.md),
      `wear_rate` (N,) float32 (health lost per flight), and
      `window_health` (N, W), the health of each window row.

    Every episode rule lives here, and the reference server and `compat` use it as it is:
    `autoreset_mode` (`spec.AutoresetMode`) says when a finished engine restarts: in the step
    that ends it ("same_step", default), when it is next stepped ("next_step", the challenge
    server's rule), or only through `reset(mask=...)` ("disabled"; stepping a finished engine is
    then a no-op that repeats its final flags with reward 0). `step(actions, mask=...)` flies
    only the masked engines; the others earn 0 and repeat their last flags.

    Memory layout: the window buffer is (N, W, 10), the 9 features and the hidden health of each
    row, so `observation` (N, W, 9) is a view of it with a row stride of 10, not a contiguous
    tensor: indexing, arithmetic, `copy_`, `reshape` and TensorDict ops take it as it is; call
    `.contiguous()` before `.view()`. The simulator keeps engines innermost (that is what
    vectorises it), so the per-engine outputs of a step are plain (N,) tensors. Outputs are never
    written in place: a returned tensor keeps its values after later steps.
    """

    def __init__(self, config: EnvConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.num_envs = config.num_envs
        self.step_size = config.step_size
        self.history = config.history
        self.device = config.device
        self._buffers = empty_buffers(self.num_envs, self.history, self.device)
        self.autoreset_mode = AutoresetMode(config.autoreset_mode)
        self._step = compose_step(
            backend,
            self.autoreset_mode is AutoresetMode.SAME_STEP,
            config.fast,
            config.final_observation,
            config.step_size,
            config.history,
            config.wait_compiled,
            restart_waiting=self.autoreset_mode is AutoresetMode.NEXT_STEP,
        )
        self._everyone = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
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
        if not self._has_reset and isinstance(self._step, CompiledStep):
            self._step.prepare()  # a fast env's library: loaded, or built in the background from now on
        self._has_reset = True
        return self._observation_td()

    def step(
        self,
        actions: torch.Tensor | np.ndarray | list,
        step_size: int | None = None,
        mask: torch.Tensor | np.ndarray | list | None = None,
    ) -> TensorDict:
        """Apply `actions` (N,) ints in {0, 1, 2} and fly up to `step_size` flights per engine.

        With `mask` (N,) bool only the masked engines act and fly (a partial step); the others
        earn 0, repeat their last flags and keep their windows. Inputs are validated before
        anything changes: a rejected call leaves the env untouched.
        """
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        step_size = self.step_size if step_size is None else check_step_size(step_size)
        actions = self._as_actions(actions)
        mask = self._everyone if mask is None else self._as_mask(mask)
        # next-step autoreset: the step itself restarts the finished engines in `mask` first
        self._buffers, out = self._step(self._buffers, actions, mask, step_size)
        return self._observation_td(out)

    def seed_engines(
        self,
        mask: torch.Tensor | np.ndarray | list,
        seeds: torch.Tensor | np.ndarray | list,
        env_indices: torch.Tensor | np.ndarray | list | None = None,
    ) -> None:
        """Re-key the masked engines: engine i's next reset starts episode 0 of engine
        `env_indices[i]` (default: its own index, `env_offset + i`) of root seed `seeds[i]`.

        That episode and the ones after it are exactly those of an env made with `seed=seeds[i]`
        at that engine index: this is how a client seeds one engine (`reset_specific_envs`,
        the protocol's per-episode seeds). Engines outside `mask` are untouched; their entries
        of `seeds` and `env_indices` are ignored. Checkpoints keep the keys.
        """
        mask = self._as_mask(mask)
        seeds = self._as_ints("seeds", seeds, 0, MAX_SEED)
        if env_indices is None:
            env_indices = self.config.env_offset + torch.arange(self.num_envs, dtype=torch.int64)
        env_indices = self._as_ints("env_indices", env_indices, 0, MAX_ENV_OFFSET)
        self.backend.seed_engines(mask, seeds.to(self.device), env_indices.to(self.device))

    @property
    def step_kind(self) -> str:
        """How `step` runs now: "eager" (not fast, or a backend without a kernel), "building"
        (eager while the compiled step is built in the background), "compiled" (the compiled
        library), "unavailable" (eager: this machine cannot compile) or "jit" (`torch.compile`, on
        accelerators)."""
        if isinstance(self._step, CompiledStep):
            return self._step.status
        return "jit" if self.config.fast and self.backend.kernel is not None else "eager"

    def wait_compiled(self, timeout: float | None = None) -> str:
        """Wait up to `timeout` seconds (None: until it ends) for this env's compiled step to be
        built, and step through it from now on if it is ready; returns `step_kind`. Nothing needs
        this: a fast env moves to its library by itself once it is ready."""
        if not self._has_reset:
            raise RuntimeError("call reset() before wait_compiled(): the build starts there")
        if isinstance(self._step, CompiledStep):
            self._step.wait(timeout)
        return self.step_kind

    @property
    def has_reset(self) -> bool:
        """Whether `reset()` has been called once (before it there is nothing to step or read)."""
        return self._has_reset

    @property
    def active(self) -> torch.Tensor:
        """(N,) bool: engines in an episode (False: finished and not restarted yet, which only
        happens when autoreset is not "same_step"). A copy."""
        return self._buffers.active.clone()

    def current(self) -> TensorDict:
        """Where every engine stands, without stepping: the observation keys, the last step's
        `terminated` / `truncated` flags and `return_so_far`."""
        if not self._has_reset:
            raise RuntimeError("call reset() before current()")
        b = self._buffers
        return self._observation_td(
            {
                "terminated": b.last_terminated,
                "truncated": b.last_truncated,
                "done": b.last_terminated | b.last_truncated,
                "return_so_far": b.return_so_far,
            }
        )

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
            f"device={c.device}, backend={type(self.backend).__name__}, autoreset_mode={self.autoreset_mode.value!r})"
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
            "row": window[:, -1, :NUM_FEATURES],
            "flight": window_flight,
            "valid": valid,
            "age": self._buffers.age,
            "since_repair": self._buffers.since_repair,
            "repairs": self._buffers.repairs,
        }
        if self.config.privileged:
            data.update(self.backend.privileged())
            data["window_health"] = torch.where(valid, window[..., HEALTH_COLUMN], 0.0)
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

    def _as_integers(self, name: str, values: torch.Tensor | np.ndarray | list) -> torch.Tensor:
        """(N,) integers given as a tensor, numpy array or list, as int64 (a tensor stays on its
        device), or a TypeError / ValueError naming `name` and the value. Ranges are the caller's."""
        if isinstance(values, torch.Tensor):
            if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
                raise TypeError(f"{name} must be integers, got a tensor of dtype {values.dtype}")
            tensor = values
        elif isinstance(values, (np.ndarray, list, tuple)):
            # NumPy turns [True, 1, 0] into int64 silently: a bool among ints is not an integer here
            if isinstance(values, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in values):
                raise TypeError(f"{name} must be integers, got a bool in {values!r}"[:300])
            array = np.asarray(values)
            if array.dtype.kind not in "iu":
                if array.dtype != object or not all(
                    isinstance(v, Integral) and not isinstance(v, bool) for v in array.flat
                ):
                    raise TypeError(f"{name} must be integers, got values of dtype {array.dtype}: {values!r}"[:300])
                try:
                    array = array.astype(np.int64)
                except OverflowError:
                    raise ValueError(f"{name} must fit in int64, got {values!r}"[:300]) from None
            tensor = torch.as_tensor(array.astype(np.int64, copy=False))
        else:
            raise TypeError(
                f"{name} must be a tensor, numpy array or list of {self.num_envs} ints, got {type(values).__name__}"
            )
        if tensor.shape != (self.num_envs,):
            raise ValueError(f"{name} must have shape ({self.num_envs},), got {tuple(tensor.shape)}")
        return tensor.to(torch.int64)

    def _as_ints(self, name: str, values: torch.Tensor | np.ndarray | list, low: int, high: int) -> torch.Tensor:
        """`_as_integers` in [low, high], or a ValueError naming the first engine outside (a sync:
        called by `seed_engines`, never by `step`)."""
        tensor = self._as_integers(name, values)
        bad = (tensor < low) | (tensor > high)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} must be in [{low}, {high}], got {int(tensor[i])} for env {i}")
        return tensor

    def _as_actions(self, actions: torch.Tensor | np.ndarray | list) -> torch.Tensor:
        """Validate and convert actions to an int64 tensor on the env's device, or raise."""
        if isinstance(actions, torch.Tensor) and not same_device(actions.device, self.device):
            raise ValueError(
                f"actions are on {actions.device}, the env is on {self.device}: move them with .to(env.device)"
            )
        tensor = self._as_integers("actions", actions)
        if self.config.validate_actions:
            # On CUDA this check reads one bool back (a sync); pass validate_actions=False to skip.
            bad = (tensor < 0) | (tensor >= NUM_ACTIONS)
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                names = ", ".join(f"{a.value}={a.name}" for a in Action)
                raise ValueError(f"actions must be in {{{names}}}, got {int(tensor[i])} for env {i}")
        return tensor.to(device=self.device, dtype=torch.int64)

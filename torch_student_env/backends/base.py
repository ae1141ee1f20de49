"""The `Backend` protocol: engines and their transitions. The env owns windows, auto-reset,
outputs, the order of a step and its compilation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from torch_student_env.types import Transition


class Backend(Protocol):
    """Something that simulates N engines: the embedded simulator or a remote server.

    Rows are `(.., spec.ROW_WIDTH)` float32: the 9 challenge features and the flight's hidden
    health (zeros when the backend cannot see it). All tensors live on `device` and cover all N
    engines.

    A backend may also offer a pure kernel (`LocalBackend.kernel` and its `sim` state): the
    same transition as a function of tensors, which the env composes with its own half of the
    step and compiles into one graph. A backend without one (the remote backend) sets `kernel`
    to None and the env calls `transition`.
    """

    num_envs: int
    device: torch.device
    kernel: Callable[..., Any] | None  # the pure transition, or None
    restart_kernel: Callable[..., Any] | None  # the pure restart of masked engines, with a kernel
    sim: Any  # the state `kernel` threads (the env writes back what it returns); None without a kernel
    episode_ids: list[str]  # each engine's episode id, as the challenge protocol names it
    session_id: str | None  # the protocol session the engines belong to (None: no server)

    def kernel_constants(self) -> tuple:
        """The arguments of `kernel` after `reset_ended`: what stays fixed for this backend (the
        compiled step's library is keyed by them). Empty without a kernel."""

    def seed(self, seed: int) -> None:
        """Restart the episode counters of every engine under a new root seed."""

    def seed_engines(self, mask: torch.Tensor, seeds: torch.Tensor, env_indices: torch.Tensor) -> None:
        """Re-key the masked engines (N,) as engine `env_indices[i]` of root seed `seeds[i]`: their
        next reset is that engine's episode 0."""

    def reset(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Start the next episode of the engines in `mask` (all if None); their first rows (N, 10).

        Rows of engines outside `mask` are unspecified; their state is untouched.
        """

    def transition(
        self, actions: torch.Tensor, active: torch.Tensor, step_size: int, reset_ended: bool
    ) -> tuple[Transition, torch.Tensor | None]:
        """Apply actions (N,) to the `active` engines and fly up to `step_size` flights; with
        `reset_ended`, also start the next episode of every engine that ended.

        Returns the transition and the fresh episodes' first rows (N, 10) (meaningful where an
        engine ended; None without `reset_ended`).
        """

    def privileged(self) -> dict[str, torch.Tensor]:
        """Hidden health of the current engines (empty when the backend cannot see it)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def close(self) -> None:
        """Release connections or other resources."""

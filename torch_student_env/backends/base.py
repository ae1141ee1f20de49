"""The `Backend` protocol: the transition only. The env owns windows, auto-reset and outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

from torch_student_env.sim.engine import Transition

C = TypeVar("C")  # what the env carries through `finish`
R = TypeVar("R")
Finish = Callable[[C, Transition, "torch.Tensor | None"], R]  # the env's half of a step


class Backend(Protocol):
    """Something that simulates N engines: the embedded simulator or a remote server.

    Rows are `(.., 10)` float32: the 9 challenge features and the flight's hidden health (zeros
    when the backend cannot see it). All tensors live on `device` and cover all N engines.
    """

    num_envs: int
    device: torch.device

    def seed(self, seed: int) -> None:
        """Restart the episode counters of every engine under a new root seed."""

    def seed_engines(self, mask: torch.Tensor, seeds: torch.Tensor, env_indices: torch.Tensor) -> None:
        """Re-key the masked engines (N,) as engine `env_indices[i]` of root seed `seeds[i]`: their
        next reset is that engine's episode 0."""

    def reset(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Start the next episode of the engines in `mask` (all if None); their first rows (N, 10).

        Rows of engines outside `mask` are unspecified; their state is untouched.
        """

    def advance(self, actions: torch.Tensor, active: torch.Tensor, n_rows: int) -> Transition:
        """Apply actions (N,) to the `active` engines and fly up to `n_rows` flights."""

    def step(
        self,
        actions: torch.Tensor,
        active: torch.Tensor,
        n_rows: int,
        reset_ended: bool,
        finish: Finish[C, R],
        carry: C,
    ) -> R:
        """`advance`, then (if `reset_ended`) `reset` the engines whose episode ended, then finish.

        Returns `finish(carry, transition, first_rows)`, where `first_rows` (N, 10) are the fresh
        episodes' rows (None without `reset_ended`). The env passes its own half of the step as
        `finish`, so that a compiling backend can fuse both halves into one graph.
        """

    def privileged(self) -> dict[str, torch.Tensor]:
        """Hidden health of the current engines (empty when the backend cannot see it)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def close(self) -> None:
        """Release connections or other resources."""

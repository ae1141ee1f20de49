"""What a backend hands the env for one step: the protocol type shared by the simulator, the
remote backend and the env (so that none of them imports another for it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Transition:
    """One step of up to K flights of N engines. Rows are `spec.ROW_WIDTH` wide: the 9 features
    and the flight's hidden health (zeros when the backend cannot see it)."""

    rows: torch.Tensor  # (N, K, 10) float32: 9 features + hidden health, per flight
    row_flown: torch.Tensor  # (N, K) bool, rows returned (a prefix of each engine's rows)
    row_flight: torch.Tensor  # (N, K) int64, flight index of each row within its episode
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool, sold or failed
    truncated: torch.Tensor  # (N,) bool, reached the flight limit without terminating
    failed: torch.Tensor  # (N,) bool, catastrophic failure in this step
    flights: torch.Tensor  # (N,) int64, flights flown in the episode after this step (the server's counter)

    def ended(self, active: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the `active` engines whose episode ended in this transition."""
        return active & (self.terminated | self.truncated)

"""`Episodes`: the totals of finished episodes, what the runners return and the statistics read."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torch_student_env.leaderboard import FinishedEpisode


@dataclass(frozen=True)
class Episodes:
    """Totals of finished episodes, flattened env-major: shapes (E,) for E = N * k episodes."""

    returns: torch.Tensor  # float32
    lengths: torch.Tensor  # int64, flights flown
    repairs: torch.Tensor  # int64
    failed: torch.Tensor  # bool
    finish_step: torch.Tensor  # int64, env step at which each episode ended (orders them in time)

    def __len__(self) -> int:
        return self.returns.numel()

    @classmethod
    def from_records(
        cls, records: list[FinishedEpisode], finish_steps: list[int], device: torch.device | str = "cpu"
    ) -> Episodes:
        """Episodes from leaderboard records (`client_view.finished_episodes`), in that order."""
        return cls(
            returns=torch.tensor([r.total_reward for r in records], dtype=torch.float32, device=device),
            lengths=torch.tensor([r.flights for r in records], dtype=torch.int64, device=device),
            repairs=torch.tensor([r.repairs for r in records], dtype=torch.int64, device=device),
            failed=torch.tensor([r.failed for r in records], dtype=torch.bool, device=device),
            finish_step=torch.tensor(finish_steps, dtype=torch.int64, device=device),
        )

    def records(self) -> list[FinishedEpisode]:
        """The episodes as leaderboard records (what `leaderboard.score_metrics` scores)."""
        columns = (self.returns.double(), self.repairs, self.lengths, self.failed)
        return [FinishedEpisode(*row, finished_at="") for row in zip(*(c.tolist() for c in columns), strict=True)]

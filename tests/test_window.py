"""The sliding window: `push_rows`, the one place that shifts rows into a window."""

from __future__ import annotations

import pytest
import torch

from torch_student_env.window import push_rows


@pytest.mark.parametrize("width, step_size", [(10, 10), (4, 10), (16, 5), (1, 3)])
def test_push_rows_matches_a_per_engine_reference(width, step_size):
    gen = torch.Generator().manual_seed(width * 100 + step_size)
    n = 50
    window = torch.randint(0, 1000, (3, width, n), generator=gen)
    rows = torch.randint(0, 1000, (3, step_size, n), generator=gen)
    n_new = torch.randint(0, step_size + 1, (n,), generator=gen)
    got = push_rows(window, rows, n_new)
    for i in range(n):
        joined = torch.cat((window[:, :, i], rows[:, : int(n_new[i]), i]), dim=1)
        assert torch.equal(got[:, :, i], joined[:, -width:])

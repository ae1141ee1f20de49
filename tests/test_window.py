"""The sliding window: `push_rows`, the one place that shifts rows into a window."""

from __future__ import annotations

import pytest
import torch

from torch_student_env.window import push_rows


@pytest.mark.parametrize("width, step_size", [(10, 10), (4, 10), (16, 5), (1, 3), (100, 10), (3, 50)])
@pytest.mark.parametrize("channels", [3, None])
def test_push_rows_matches_a_per_engine_reference(width, step_size, channels):
    gen = torch.Generator().manual_seed(width * 100 + step_size)
    n = 50
    extra = () if channels is None else (channels,)
    window = torch.randint(0, 1000, (n, width, *extra), generator=gen)
    rows = torch.randint(0, 1000, (n, step_size, *extra), generator=gen)
    n_new = torch.randint(0, step_size + 1, (n,), generator=gen)
    n_new[:3] = torch.tensor([0, step_size, min(1, step_size)])  # the extremes are always there
    got = push_rows(window, rows, n_new)
    assert got.shape == window.shape and got.dtype == window.dtype
    for i in range(n):
        joined = torch.cat((window[i], rows[i, : int(n_new[i])]), dim=0)
        assert torch.equal(got[i], joined[-width:])


def test_push_rows_takes_rows_as_a_view_of_engines_last_memory():
    """The simulator hands its rows as an (N, K, C) view of (C, K, N) memory."""
    gen = torch.Generator().manual_seed(0)
    window = torch.randn(7, 12, 4, generator=gen)
    rows_memory = torch.randn(4, 5, 7, generator=gen)
    n_new = torch.tensor([0, 5, 2, 3, 1, 4, 5])
    view = rows_memory.permute(2, 1, 0)
    assert torch.equal(push_rows(window, view, n_new), push_rows(window, view.contiguous(), n_new))


@pytest.mark.parametrize("channels", [3, None])
def test_the_compiled_shift_equals_the_eager_one(channels):
    """Compiled, `push_rows` gathers element by element (which inductor fuses); eager, it
    selects whole rows. Both are the same shift."""
    gen = torch.Generator().manual_seed(7)
    extra = () if channels is None else (channels,)
    window = torch.randint(0, 1000, (30, 12, *extra), generator=gen)
    rows = torch.randint(0, 1000, (30, 5, *extra), generator=gen)
    n_new = torch.randint(0, 6, (30,), generator=gen)
    compiled = torch.compile(push_rows, dynamic=False, fullgraph=True)
    assert torch.equal(compiled(window, rows, n_new), push_rows(window, rows, n_new))

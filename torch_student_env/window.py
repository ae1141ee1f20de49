"""Sliding windows of flight rows, engines last: the one place that shifts rows into a window."""

from __future__ import annotations

import torch


def push_rows(window: torch.Tensor, rows: torch.Tensor, n_new: torch.Tensor) -> torch.Tensor:
    """Append each engine's first `n_new[i]` rows to its window and keep the newest W.

    `window` (C, W, N), oldest first; `rows` (C, K, N), whose first n_new[i] (N,) are real; any
    dtype. Slot w of the result is element n_new + w of the concatenation [window, rows]: it is
    read from either source with a gather and a select instead of materialising the
    concatenation (twice the window's memory, every step).
    """
    width, channels = window.shape[1], window.shape[0]
    source = n_new + torch.arange(width, device=window.device).unsqueeze(1)  # (W, N) into W + K
    from_window = source < width
    old = source.clamp(max=width - 1).expand(channels, -1, -1)
    new = (source - width).clamp(min=0).expand(channels, -1, -1)
    return torch.where(from_window, window.gather(1, old), rows.gather(1, new))

"""The counter-based random numbers of `sim.rng`: the int32 hash and the distributions drawn from it."""

from __future__ import annotations

import torch

from torch_student_env.sim import rng


def _reference_mix32(x: int) -> int:
    """The hash on unsigned Python ints, the definition the int32 tensors must reproduce."""
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & m
    x ^= x >> 15
    x = (x * 0x735A2D97) & m
    return x ^ (x >> 15)


def test_int32_hash_matches_unsigned_reference():
    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    got = rng.mix32(torch.tensor([rng.as_int32(v) for v in values], dtype=torch.int32))
    assert [int(g) & 0xFFFFFFFF for g in got] == [_reference_mix32(v) for v in values]
    u = rng.uniform24(rng.mix32(torch.arange(100_000, dtype=torch.int32)))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    z = torch.cat(rng.normal_pair(rng.mix32(torch.arange(100_000, dtype=torch.int32))))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01

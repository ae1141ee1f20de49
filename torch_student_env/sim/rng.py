"""Counter-based random numbers: every draw is a pure hash of integer coordinates.

A draw for (seed, env, episode, flight, stream) never depends on how many envs run, on what the
other envs do, or on the order of calls; that is what makes env i's episode k a function of
(seed, i, k) and the actions alone, and what lets a checkpoint hold no generator state.

All arithmetic is int64 on values below 2**32 and multipliers below 2**31, so no product
overflows: the same bits come out on every device and under `torch.compile`.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
# Multipliers of a 32-bit integer finaliser with good avalanche, both < 2**31 so products of
# 32-bit values fit in int64 (C. Wellons, "Prospecting for hash functions", 2018).
_MUL_A = 0x21F0AAAD
_MUL_B = 0x735A2D97
_INV_2_24 = 1.0 / (1 << 24)
_INV_2_16 = 1.0 / (1 << 16)


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Hash int64 values in [0, 2**32) to int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL_A) & MASK32
    x = x ^ (x >> 15)
    x = (x * _MUL_B) & MASK32
    return x ^ (x >> 15)


def combine(key: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold one more integer coordinate into a key; order matters, collisions are hashed away."""
    return mix32(key ^ (value & MASK32))


def uniform24(bits: torch.Tensor) -> torch.Tensor:
    """Float32 uniform in (0, 1) from the top 24 bits of a hash (full float32 resolution)."""
    return ((bits >> 8).to(torch.float32) + 0.5) * _INV_2_24


def uniform16_pair(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 uniforms in (0, 1) with 16-bit resolution from one hash (cheap draws)."""
    hi = ((bits >> 16).to(torch.float32) + 0.5) * _INV_2_16
    lo = ((bits & 0xFFFF).to(torch.float32) + 0.5) * _INV_2_16
    return hi, lo


def normal_pair(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals from one hash (Box-Muller on 16-bit uniforms).

    The 16-bit radius caps |z| at 4.9 sigma, which is harmless for sensor noise.
    """
    u1, u2 = uniform16_pair(bits)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def stream_bits(key: torch.Tensor, count: int) -> torch.Tensor:
    """`count` independent hashes per key: shape `key.shape + (count,)`."""
    streams = torch.arange(1, count + 1, device=key.device, dtype=torch.int64) * 0x9E3779B
    return mix32(key.unsqueeze(-1) ^ streams)


def seed_key(seed: int | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The root key of a seed (an int in [0, 2**63), or an int64 tensor of them), folded to 32 bits."""
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device)
    return mix32(mix32(seed & MASK32) ^ ((seed >> 32) & MASK32))

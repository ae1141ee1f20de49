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


def _ks_statistic(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the samples' empirical CDF and `cdf`."""
    x, _ = torch.sort(samples.double())
    n = x.numel()
    f = cdf(x)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    below = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / 2**0.5))


def test_draws_follow_their_distributions():
    """KS distances against the exact CDFs, and the moments the simulator's noise relies on.

    n = 200,000 draws: the KS distance of a correct sampler exceeds 1.95 / sqrt(n) = 0.0044 with
    probability 0.001; the draws are deterministic, so this either always passes or never does.
    """
    n = 200_000
    bits = rng.stream_bits(rng.fold(rng.seed_key(7, "cpu"), torch.arange(n)), 2)
    limit = 1.95 / n**0.5
    u = rng.uniform24(bits[0])
    assert _ks_statistic(u, lambda x: x) < limit
    z1, z2 = rng.normal_pair(bits[1])
    for z in (z1, z2):
        assert _ks_statistic(z, _normal_cdf) < limit
        z = z.double()
        assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
        assert abs((z**3).mean()) < 0.03 and abs((z**4).mean() - 3) < 0.06  # skew 0, kurtosis 3
        assert z.abs().max() < 5  # the 16-bit radius caps |z| at about 4.9
    # the two normals of one hash are uncorrelated, also in their squares (Box-Muller's pair)
    assert abs(torch.corrcoef(torch.stack((z1, z2)))[0, 1]) < 4 / n**0.5
    assert abs(torch.corrcoef(torch.stack((z1**2, z2**2)))[0, 1]) < 4 / n**0.5


def _uniforms(seed: int, engines: int, episode: int, flights: int, streams: int) -> torch.Tensor:
    """(streams, flights, engines) uniforms keyed as the simulator keys its draws."""
    episode_key = rng.fold(rng.fold(rng.seed_key(seed, "cpu"), torch.arange(engines)), episode)
    return rng.uniform24(rng.stream_bits(rng.fold(episode_key, torch.arange(flights).unsqueeze(1)), streams))


def test_draws_are_independent_across_engines_flights_and_streams():
    """The simulator keys a draw by (seed, engine, episode, flight, stream): neighbouring
    coordinates must give uncorrelated draws (|r| < 4 / sqrt(n), about 4 standard errors)."""
    engines, flights = 2_000, 100
    u = _uniforms(11, engines + 1, 0, flights + 1, 2)  # one extra engine and flight: the neighbours
    base = u[0, :-1, :-1]
    neighbours = {
        "next stream": u[1, :-1, :-1],
        "next engine": u[0, :-1, 1:],
        "next flight": u[0, 1:, :-1],
        "next episode": _uniforms(11, engines, 1, flights, 1)[0],
        "next seed": _uniforms(12, engines, 0, flights, 1)[0],
    }
    n = base.numel()
    for name, other in neighbours.items():
        r = torch.corrcoef(torch.stack((base.flatten(), other.flatten())))[0, 1]
        assert abs(r) < 4 / n**0.5, (name, float(r))

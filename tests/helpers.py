"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

TOKEN_A, TOKEN_B = "token-a", "token-b"  # the tokens of the suite's reference server


def const_actions(n: int, action: int) -> torch.Tensor:
    """(n,) int64 tensor filled with one action."""
    return torch.full((n,), action, dtype=torch.int64)


def snapshot(env) -> dict:
    """A flat copy of every tensor in env.state_dict(), for bit-identity checks."""
    flat: dict = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, torch.Tensor):
            flat[prefix] = value.clone()
        else:
            flat[prefix] = value

    walk("", env.state_dict())
    return flat


def assert_same_snapshot(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k

"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import requests
import torch

TOKEN_A, TOKEN_B = "token-a", "token-b"  # the tokens of the suite's reference server
API = "/api/v1"


def api_post(url, path, token=TOKEN_A, **kwargs):
    """POST to the protocol's `path` as `token` (None: no token header)."""
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["User-Token"] = token
    return requests.post(url + API + path, headers=headers, timeout=10, **kwargs)


def api_get(url, path, token=TOKEN_A):
    """GET the protocol's `path` as `token`."""
    return requests.get(url + API + path, headers={"User-Token": token}, timeout=10)


def api_group(url, n, token=TOKEN_A, **env_config):
    """A new session and a group of `n` episodes in it: (session id, episode ids)."""
    sid = api_post(url, "/session/create", token).json()["session_id"]
    body = {"num_envs": n, "env_config": {"step_size": 10, **env_config}}
    r = api_post(url, "/vectorized/episodes/create", token, headers={"Session-ID": sid}, json=body)
    assert r.status_code == 200, r.text
    return sid, r.json()["episode_ids"]


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

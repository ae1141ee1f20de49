"""Devices compare by normalised value ("cpu:0" == "cpu", "cuda" == "cuda:<current>"), and
`env_offset` shards reproduce one big env."""

from __future__ import annotations

import pytest
import torch
from helpers import const_actions

from torch_student_env import Action, make_env, normalize_device


def test_normalize_device():
    assert normalize_device("cpu:0") == torch.device("cpu") == normalize_device(torch.device("cpu", 0))
    assert normalize_device("cpu") == torch.zeros(1).device
    with pytest.raises(ValueError, match="must name a torch device"):
        normalize_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' is not available on this machine"):
            normalize_device("cuda")
    else:
        assert normalize_device("cuda") == torch.zeros(1, device="cuda").device


def test_env_on_cpu0_takes_cpu_tensors(env_factory):
    env = env_factory(num_envs=3, device="cpu:0", seed=1)
    assert env.device == torch.device("cpu")
    td = env.reset()
    assert td.device == torch.device("cpu")
    td = env.step(const_actions(3, Action.DO_NOTHING))
    assert td["observation"].device == torch.device("cpu") and not td["done"].any()
    if env_factory.backend == "local":  # remote envs auto-reset themselves; masks go through reset(mask=)
        env = env_factory(num_envs=3, device="cpu:0", seed=1, autoreset_mode="disabled")
        env.reset()
        env.step(torch.tensor([2, 0, 0]))
        td = env.reset(mask=torch.tensor([True, False, False]))
        assert td["flight"][0, -1] == 0 and td["flight"][1, -1] == 10


def test_adapters_on_cpu0():
    pytest.importorskip("torchrl", reason="needs the [torchrl] extra")
    pytest.importorskip("gymnasium", reason="needs the [gym] extra")
    import numpy as np

    from torch_student_env.adapters.gymnasium import GymnasiumVectorEnv
    from torch_student_env.adapters.torchrl import TorchRLStudentEnv

    env = TorchRLStudentEnv(num_envs=2, device="cpu:0", seed=0)
    rollout = env.rollout(3, break_when_any_done=False)
    assert rollout["next", "observation"].shape == (2, 3, 10, 9) and env.device == torch.device("cpu")
    vec = GymnasiumVectorEnv(num_envs=2, device="cpu:0", seed=0)
    vec.reset(seed=0)
    obs, *_ = vec.step(np.zeros(2, dtype=np.int64))
    assert obs.shape == (2, 10, 9)


def test_two_shards_equal_one_env_of_twice_the_engines(env_factory):
    """Engine i of a shard with env_offset=k is engine k + i of one env: bit for bit on CPU."""
    big = env_factory(num_envs=8, seed=3)
    shards = [env_factory(num_envs=4, seed=3, env_offset=k) for k in (0, 4)]
    tb, parts = big.reset(), [s.reset() for s in shards]
    assert torch.equal(tb["observation"], torch.cat([p["observation"] for p in parts]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        actions = torch.multinomial(torch.tensor([0.85, 0.1, 0.05]), 8, replacement=True, generator=gen)
        tb = big.step(actions)
        parts = [shards[0].step(actions[:4]), shards[1].step(actions[4:])]
        for key in ("observation", "reward", "done", "episode_return", "final_observation"):
            assert torch.equal(tb[key], torch.cat([p[key] for p in parts])), key


def test_env_offset_is_validated():
    with pytest.raises(ValueError, match="env_offset must be in"):
        make_env(num_envs=4, env_offset=-1)
    with pytest.raises(ValueError, match="env_offset must be in"):
        make_env(num_envs=4, env_offset=2**31)

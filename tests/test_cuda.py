"""The env on CUDA, whenever a GPU is present (skipped otherwise): devices, equality with the CPU
env, partial resets, checkpoints, and no host sync inside `step`, eager and compiled."""

from __future__ import annotations

import pytest
import torch

from torch_student_env import make_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU tests need one")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_env_accepts_its_own_tensors(device):
    env = make_env(num_envs=8, device=device, seed=0)
    assert env.device == torch.device("cuda", torch.cuda.current_device())
    td = env.reset()
    td = env.step(torch.zeros(8, dtype=torch.long, device="cuda"))
    assert td.device == env.device and td["observation"].device == env.device
    td = env.reset(mask=td["done"])
    with pytest.raises(ValueError, match="actions are on cpu"):
        env.step(torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("fast", [False, True])
def test_cuda_matches_cpu_and_steps_without_host_sync(fast):
    cpu = make_env(num_envs=64, seed=4, fast=fast)
    gpu = make_env(num_envs=64, seed=4, fast=fast, device="cuda", validate_actions=False)
    a, b = cpu.reset(), gpu.reset()
    gen = torch.Generator().manual_seed(0)
    for t in range(30):
        actions = torch.multinomial(torch.tensor([0.85, 0.1, 0.05]), 64, replacement=True, generator=gen)
        a = cpu.step(actions)
        gpu_actions = actions.to("cuda")
        if t >= 3:  # after the compile and the first allocations
            torch.cuda.set_sync_debug_mode("error")
        try:
            b = gpu.step(gpu_actions)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(a["done"], b["done"].cpu()) and torch.equal(a["flight"], b["flight"].cpu())
        assert torch.allclose(a["observation"], b["observation"].cpu(), rtol=1e-5, atol=1e-2)
        assert torch.allclose(a["reward"], b["reward"].cpu(), rtol=1e-4, atol=1e-2)


def test_cuda_state_dict_round_trip():
    env = make_env(num_envs=16, seed=2, device="cuda")
    env.reset()
    env.step(torch.zeros(16, dtype=torch.long, device="cuda"))
    state = env.state_dict()
    after = env.step(torch.ones(16, dtype=torch.long, device="cuda"))
    other = make_env(num_envs=16, seed=99, device="cuda")
    other.load_state_dict(state)
    again = other.step(torch.ones(16, dtype=torch.long, device="cuda"))
    assert torch.equal(after["observation"], again["observation"]) and torch.equal(after["reward"], again["reward"])

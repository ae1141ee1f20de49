"""TorchRL adapter: specs, equality with the native env, partial resets, collectors, transforms."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchrl", reason="TorchRL adapter tests need the [torchrl] extra")

from torchrl.collectors import Collector, MultiSyncCollector  # noqa: E402
from torchrl.envs import EnvCreator, RewardSum, StepCounter, TransformedEnv  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from torch_student_env import make_env  # noqa: E402
from torch_student_env.adapters.torchrl import TorchRLStudentEnv  # noqa: E402


def _make_worker_env():
    return TorchRLStudentEnv(num_envs=4, seed=3)


class FixedActions:
    """A picklable policy: a deterministic action pattern from the flight index."""

    def __call__(self, td):
        flight = td["flight"][..., -1]
        td["action"] = torch.where(flight % 70 == 60, 1, torch.where(flight >= 400, 2, 0))
        return td


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("step_size", [1, 10])
def test_check_env_specs(n, step_size):
    env = TorchRLStudentEnv(num_envs=n, step_size=step_size, seed=0)
    check_env_specs(env)
    assert env.batch_size == torch.Size([n])
    assert env.action_spec.shape == (n,) and env.full_done_spec["done"].shape == (n, 1)


def test_rollout_equals_native_env():
    """50 steps of the TorchRL env and of the native env (autoreset_mode="disabled" + masked resets)."""
    rl_env = TorchRLStudentEnv(num_envs=6, seed=11)
    native = make_env(num_envs=6, seed=11, autoreset_mode="disabled")
    gen = torch.Generator().manual_seed(0)
    actions = [
        torch.multinomial(torch.tensor([0.8, 0.15, 0.05]), 6, replacement=True, generator=gen) for _ in range(50)
    ]
    state = {"i": 0}

    def policy(td):
        td["action"] = actions[state["i"]]
        state["i"] += 1
        return td

    rollout = rl_env.rollout(50, policy, break_when_any_done=False)
    native.reset()
    for t in range(50):
        out = native.step(actions[t])
        assert torch.equal(rollout["next", "reward"][:, t, 0], out["reward"]), t
        assert torch.equal(rollout["next", "done"][:, t, 0], out["done"]), t
        assert torch.equal(rollout["next", "truncated"][:, t, 0], out["truncated"]), t
        # the terminal window is real, never NaN-filled
        assert torch.equal(rollout["next", "observation"][:, t], out["observation"])
        if out["done"].any():
            native.reset(mask=out["done"])
    assert rollout["next", "done"].any(), "the rollout should have covered at least one episode end"
    assert not torch.isnan(rollout["next", "observation"]).any()


def test_partial_reset_resets_exactly_the_masked_envs():
    env = TorchRLStudentEnv(num_envs=4, seed=2)
    td = env.reset()
    for _ in range(3):
        td = env.step(td.set("action", torch.zeros(4, dtype=torch.long)))["next"]
    before = td.clone()
    mask = torch.tensor([[True], [False], [True], [False]])
    after = env.reset(td.set("_reset", mask))
    assert after["flight"][[0, 2], -1].tolist() == [0, 0]
    assert torch.equal(after["observation"][[1, 3]], before["observation"][[1, 3]])
    assert after["flight"][[1, 3], -1].tolist() == [30, 30]


def test_set_seed_makes_rollouts_reproducible():
    a, b = TorchRLStudentEnv(num_envs=3), TorchRLStudentEnv(num_envs=3)
    a.set_seed(7), b.set_seed(7)
    ra, rb = a.rollout(20, FixedActions()), b.rollout(20, FixedActions())
    assert torch.equal(ra["next", "observation"], rb["next", "observation"])


def test_transformed_env_reward_sum_and_step_counter():
    env = TransformedEnv(TorchRLStudentEnv(num_envs=4, seed=5), RewardSum())
    env.append_transform(StepCounter())
    check_env_specs(env)
    r = env.rollout(30, FixedActions(), break_when_any_done=False)
    assert r["next", "step_count"][:, 0].eq(1).all()
    # episode_reward is the running sum of rewards within each episode
    first_done = r["next", "done"][0, :, 0].nonzero()
    stop = int(first_done[0]) + 1 if len(first_done) else 30
    assert torch.allclose(r["next", "episode_reward"][0, stop - 1], r["next", "reward"][0, :stop].sum(0), rtol=1e-5)


def test_collector_batches():
    collector = Collector(_make_worker_env, FixedActions(), frames_per_batch=80, total_frames=240)
    batches = [b for b in collector]
    collector.shutdown()
    assert len(batches) == 3 and batches[0].numel() == 80
    assert batches[0]["next", "reward"].shape[-1] == 1


@pytest.mark.slow  # multi-process collector
def test_multi_process_collector_two_workers():
    create = EnvCreator(_make_worker_env)
    collector = MultiSyncCollector([create, create], FixedActions(), frames_per_batch=160, total_frames=320)
    shapes = []
    try:
        for batch in collector:
            shapes.append(batch.numel())
            assert torch.isfinite(batch["next", "reward"]).all()
            assert set(batch["action"].unique().tolist()) <= {0, 1, 2}
    finally:
        collector.shutdown()
    assert shapes == [160, 160]


@pytest.mark.slow  # multi-process collector
def test_collector_workers_step_different_engines_by_default():
    """Two workers from one factory (same seed), a deterministic policy: different data, because
    each worker process gets its own env_offset, k * N for the k-th child process."""
    create = EnvCreator(_make_worker_env)
    collector = MultiSyncCollector([create, create], FixedActions(), frames_per_batch=160, total_frames=160)
    try:
        batch = next(iter(collector))  # (workers, envs, steps)
    finally:
        collector.shutdown()
    first_windows = batch["observation"][:, :, 0]  # (2, 4, W, 9)
    assert not torch.equal(first_windows[0], first_windows[1])
    # each worker's engines are a shard of one seed-3 env: engines k*4 .. k*4+3 for its own k
    native = make_env(num_envs=4 * 64, seed=3).reset()["observation"].view(64, 4, *first_windows.shape[-2:])
    shards = [[k for k in range(64) if torch.equal(first_windows[w], native[k])] for w in range(2)]
    assert all(len(s) == 1 and s[0] >= 1 for s in shards) and shards[0] != shards[1], shards

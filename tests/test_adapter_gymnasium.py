"""Gymnasium VectorEnv (SAME_STEP autoreset) and Stable-Baselines3 VecEnv adapters."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium", reason="Gymnasium adapter tests need the [gym] extra")

import gymnasium as gym  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402

from torch_student_env import make_env  # noqa: E402
from torch_student_env.adapters.gymnasium import GymnasiumVectorEnv  # noqa: E402


def test_spaces_contain_what_the_env_returns():
    env = GymnasiumVectorEnv(num_envs=5, step_size=10, seed=0)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs) and obs.dtype == np.float32
    assert all(env.single_observation_space.contains(o) for o in obs)
    actions = env.action_space.sample()
    assert env.action_space.contains(actions) and actions.shape == (5,)
    obs, reward, terminated, truncated, info = env.step(actions)
    assert obs.shape == (5, 10, 9) and reward.dtype == np.float32
    assert terminated.dtype == bool and truncated.dtype == bool
    assert info["valid"].shape == (5, 10) and info["_valid"].all()


def test_same_step_autoreset_semantics():
    env = GymnasiumVectorEnv(num_envs=3, seed=4)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset()
    before, *_ = env.step(np.array([0, 0, 0]))
    obs, reward, terminated, truncated, info = env.step(np.array([0, 2, 0]))
    assert terminated.tolist() == [False, True, False]
    # SAME_STEP: the returned obs is already the new episode's first window...
    assert info["flight"][1].tolist() == [-1] * 9 + [0]
    assert (obs[1, :-1] == 0).all()
    # ...and the terminal obs is in info["final_obs"] (object array, None elsewhere)
    assert info["_final_obs"].tolist() == [False, True, False]
    assert info["final_obs"][0] is None and info["final_obs"][2] is None
    np.testing.assert_array_equal(info["final_obs"][1][:-1], before[1][1:])  # a sale flies one flight
    assert info["final_info"]["_episode_return"].tolist() == [False, True, False]
    # the next step continues the new episode normally
    _, _, terminated, _, info = env.step(np.array([0, 0, 0]))
    assert not terminated.any() and "final_obs" not in info and info["flight"][1, -1] == 10


def test_reset_seed_reproducible_and_matches_native():
    env = GymnasiumVectorEnv(num_envs=4)
    a, _ = env.reset(seed=9)
    b, _ = env.reset(seed=9)
    np.testing.assert_array_equal(a, b)
    native = make_env(num_envs=4, seed=9).reset()["observation"].numpy()
    np.testing.assert_array_equal(a, native)


def test_sb3_vec_env_terminal_observation_and_ppo():
    pytest.importorskip("stable_baselines3", reason="SB3 adapter tests need the [sb3] extra")
    from stable_baselines3 import PPO

    from torch_student_env.adapters.sb3 import SB3VecEnv

    venv = SB3VecEnv(num_envs=4, seed=6)
    native = make_env(num_envs=4, seed=6)
    venv.reset(), native.reset()
    for t in range(80):
        actions = np.array([0, 0, 1 if t % 12 == 11 else 0, 2 if t == 5 else 0])
        obs, rewards, dones, infos = venv.step(actions)
        td = native.step(torch.as_tensor(actions))
        np.testing.assert_array_equal(rewards, td["reward"].numpy())
        for i in np.flatnonzero(dones):
            np.testing.assert_array_equal(infos[i]["terminal_observation"], td["final_observation"][i].numpy())
            assert infos[i]["TimeLimit.truncated"] == bool(td["truncated"][i])
        assert all("terminal_observation" not in infos[i] for i in np.flatnonzero(~dones))
    model = PPO("MlpPolicy", SB3VecEnv(num_envs=8, seed=0), n_steps=64, batch_size=128, n_epochs=2, verbose=0, seed=0)
    model.learn(2048)
    assert model.num_timesteps >= 2048


def test_adapters_require_auto_reset_choice():
    with pytest.raises(ValueError, match="autoreset_mode='same_step'"):
        GymnasiumVectorEnv(env=make_env(num_envs=2, autoreset_mode="disabled"))
    # SAME_STEP autoreset reports each finished episode's last window: the env must keep them
    with pytest.raises(ValueError, match="final_observation=True"):
        GymnasiumVectorEnv(num_envs=2, final_observation=False)


def test_registered_for_make_and_make_vec():
    """`import torch_student_env` registers TorchStudentEnv-v0 with Gymnasium."""
    import torch_student_env  # noqa: F401

    vec = gym.make_vec("TorchStudentEnv-v0", num_envs=3, vectorization_mode="vector_entry_point", seed=2)
    assert isinstance(vec, GymnasiumVectorEnv) and vec.num_envs == 3
    obs, _ = vec.reset(seed=2)
    np.testing.assert_array_equal(obs, make_env(num_envs=3, seed=2).reset()["observation"].numpy())
    single = gym.make("TorchStudentEnv-v0", seed=2)
    obs, info = single.reset(seed=2)
    assert obs.shape == (10, 9) and info["valid"][-1] and not info["valid"][0]
    obs, reward, terminated, truncated, info = single.step(2)  # a sale: one row, 150, the end
    assert reward == 150.0 and terminated and not truncated and info["valid"].sum() == 2
    obs, _ = single.reset()
    assert info["flight"][-1] == 1 and single.unwrapped.env.backend.sim.episode[0] == 1  # the next episode


def _run_without(blocked: str, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import <blocked>` fails, as if it were not installed."""
    prelude = f"import sys; sys.modules[{blocked!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a subprocess or a browser
def test_the_gym_extra_works_without_stable_baselines3():
    """`pip install .[gym]` alone: the package, gymnasium.make and the vector env all import;
    asking for the SB3 adapter names the extra that brings it."""
    done = _run_without(
        "stable_baselines3",
        "import torch_student_env, gymnasium\n"
        "env = gymnasium.make('TorchStudentEnv-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "from torch_student_env.adapters.gymnasium import GymnasiumVectorEnv\n"
        "print('ok', obs.shape, GymnasiumVectorEnv(num_envs=2, seed=0).num_envs)\n"
        "try:\n"
        "    from torch_student_env.adapters.sb3 import SB3VecEnv\n"
        "except ImportError as err:\n"
        "    print('refused:', err)\n",
    )
    assert done.returncode == 0, done.stderr
    assert "ok (10, 9) 2" in done.stdout
    assert "refused: stable_baselines3.common.vec_env is not installed" in done.stdout and "[sb3]" in done.stdout


def test_sb3vecenv_is_found_in_its_own_module_and_the_old_place_says_where():
    """No re-export (it made an import cycle): the old place names the new one."""
    pytest.importorskip("stable_baselines3")
    from torch_student_env.adapters import gymnasium as adapter
    from torch_student_env.adapters.sb3 import SB3VecEnv

    assert SB3VecEnv.__module__ == "torch_student_env.adapters.sb3"
    with pytest.raises(AttributeError, match="from torch_student_env.adapters.sb3 import SB3VecEnv"):
        adapter.SB3VecEnv  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        adapter.Nope  # noqa: B018


def test_player_keys_as_a_dict_observation_for_gymnasium_and_sb3():
    """`player_keys=True`: a Dict of the window and [age, since_repair, repairs], final values in
    the final observation, and SB3's MultiInputPolicy trains on it."""
    env = GymnasiumVectorEnv(num_envs=4, seed=3, player_keys=True)
    native = make_env(num_envs=4, seed=3)
    obs, _ = env.reset(seed=3)
    native.reset(seed=3)
    assert env.observation_space.contains(obs) and obs["player"].tolist() == [[0.0, 0.0, 0.0]] * 4
    ended = 0
    for t in range(40):
        actions = np.array([0, 1 if t % 6 == 5 else 0, 2 if t == 7 else 0, 0])
        obs, _, terminated, truncated, info = env.step(actions)
        td = native.step(torch.as_tensor(actions))
        expected = torch.stack([td["age"], td["since_repair"], td["repairs"]], dim=-1).float().numpy()
        np.testing.assert_array_equal(obs["player"], expected)
        for i in np.flatnonzero(terminated | truncated):
            final = info["final_obs"][i]
            np.testing.assert_array_equal(final["observation"], td["final_observation"][i].numpy())
            assert final["player"].tolist() == [
                float(td["episode_length"][i]), float(td["final_since_repair"][i]), float(td["episode_repairs"][i])
            ]  # fmt: skip
            ended += 1
    assert ended > 0 and env.observation_space.contains(obs)
    single = gym.make("TorchStudentEnv-v0", player_keys=True, seed=1)
    first, _ = single.reset(seed=1)
    after, *_ = single.step(1)
    assert single.observation_space.contains(after) and after["player"].tolist() == [10.0, 10.0, 1.0]
    pytest.importorskip("stable_baselines3", reason="SB3 adapter tests need the [sb3] extra")
    from stable_baselines3 import PPO

    from torch_student_env.adapters.sb3 import SB3VecEnv

    venv = SB3VecEnv(num_envs=4, seed=0, player_keys=True)
    model = PPO("MultiInputPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, verbose=0, seed=0)
    model.learn(256)
    assert model.num_timesteps >= 256

"""Quickstart: the challenge notebook's loop, on the batched PyTorch env.

The seed notebook drives the remote simulator through the challenge's client like this; with
`torch_student_env.compat` the same code runs unchanged on the embedded simulator (or on any
server of the challenge protocol), changing only the import line:

    import numpy as np
    from torch_student_env.compat import create_student_gym_env_vectorized

    env = create_student_gym_env_vectorized(num_envs=4, step_size=10, user_token='your_token')
    print(f"Environment created with {env.num_envs} parallel environments")
    observations, infos = env.reset()
    for step in range(40):
        terminated_envs = env.get_terminated_env_indices()
        if terminated_envs:
            reset_obs, reset_infos = env.reset_specific_envs(terminated_envs)
            for i, env_id in enumerate(terminated_envs):
                infos[env_id] = reset_infos[i]
        actions = np.random.randint(0, 3, size=env.num_envs)
        observations, rewards, terminateds, truncateds, infos = env.step(actions)
        print(f"Step {step + 1}: actions {actions} rewards {rewards} terminated {terminateds}")
        print(f"Active environments: {env.get_active_count()}/{env.num_envs}")
    env.close()

Below, the native version: one TensorDict per step, resets done for you inside `step`, and the
sensor window as a fixed (N, W, 9) tensor with a validity mask instead of ragged lists.

Run: python examples/quickstart.py
"""

import torch

from torch_student_env import FEATURE_NAMES, make_env

env = make_env(num_envs=4, step_size=10, seed=0)  # embedded simulator, cpu; device="cuda" works too
print(env)
td = env.reset()
print(f"observation {tuple(td['observation'].shape)}, valid rows after reset: {td['valid'].sum(1).tolist()}")

generator = torch.Generator().manual_seed(0)
for step in range(40):
    actions = torch.randint(0, 3, (env.num_envs,), generator=generator)
    td = env.step(actions)  # finished engines restart inside step; td describes this transition
    print(
        f"step {step + 1:2d}  actions {actions.tolist()}  rewards {[round(r, 1) for r in td['reward'].tolist()]}"
        f"  terminated {td['terminated'].tolist()}  truncated {td['truncated'].tolist()}"
    )
    for i in td["done"].nonzero().flatten().tolist():
        print(
            f"          env {i} finished: return {td['episode_return'][i]:.0f} over {td['episode_length'][i]} flights,"
            f" {td['episode_repairs'][i]} repairs, failed={bool(td['episode_failed'][i])}"
        )

# Two views of the same data (after one more step so every window holds flights):
td = env.step(torch.zeros(env.num_envs, dtype=torch.long))
window = td["observation"]  # (N, W, 9): the last W flights, oldest first, for a 1D-CNN over time
row = td["row"]  # (N, 9): only the newest flight, for a model that reads one row at a time
print(f"\nwindow {tuple(window.shape)}; valid rows per env {td['valid'].sum(1).tolist()}")
print("newest row of env 0:")
for name, value in zip(FEATURE_NAMES, row[0].tolist(), strict=True):
    print(f"  {name:12s} {value:12.3f}")
env.close()

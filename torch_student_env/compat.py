"""The seed client's API as a drop-in: change `from student_client...` to `torch_student_env.compat`.

`create_student_gym_env_vectorized(...)` and `create_student_gym_env(...)` take the seed client's
parameters and return the same types (numpy arrays, ragged lists of `(rows, 9)` arrays, lists of
info dicts). They run on the embedded simulator unless a server URL is given (argument or
`$SERVER_URL`), in which case they speak the challenge protocol through the remote backend.

Differences from the seed client, all on the side of not losing information:
- errors raise (the seed client turned any error into "every env terminated");
- `step` always returns one entry per env; a finished env that was not reset yields an empty
  `(0, 9)` array, zero reward and its final flags, whatever `auto_reset` says;
- `reset_specific_envs(..., seeds=...)` does not take per-env seeds: seed everything with `reset(seed)`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from torch_student_env.make import make_env
from torch_student_env.spec import MAX_STEP_SIZE, NUM_ACTIONS, NUM_FEATURES


def _setting(value: Any, env_var: str, default: Any, kind: type) -> Any:
    """Argument, else environment variable, else default (the seed client's order)."""
    if value is not None:
        return value
    raw = os.environ.get(env_var)
    if raw is None:
        return default
    if kind is bool:
        return raw.strip().lower() == "true"
    try:
        return kind(raw)
    except ValueError as err:
        raise ValueError(f"${env_var}={raw!r} is not a valid {kind.__name__}") from err


def _connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout) -> dict[str, Any]:
    """The settings both factories resolve from arguments, then environment variables, then defaults."""
    return {
        "max_steps_per_episode": _setting(max_steps_per_episode, "MAX_STEPS_PER_EPISODE", 1000, int),
        "auto_reset": _setting(auto_reset, "AUTO_RESET", True, bool),
        "server_url": _setting(server_url, "SERVER_URL", None, str),
        "user_token": _setting(user_token, "USER_TOKEN", None, str),
        "timeout": _setting(timeout, "TIMEOUT", 30.0, float),
    }


class StudentGymEnvVectorized:
    """The seed's vectorized client API over a `TorchStudentEnv` (numpy in, numpy out)."""

    def __init__(
        self,
        num_envs: int = 4,
        step_size: int = 1,
        max_steps_per_episode: int = 1000,
        auto_reset: bool = True,
        prod: bool = True,
        return_all_states: bool = True,
        server_url: str | None = None,
        user_token: str | None = None,
        timeout: float = 30.0,
        episode_ids: list[str] | None = None,
        session_id: str | None = None,
        seed: int | None = None,
    ) -> None:
        remote = {}
        if server_url is not None:
            remote = dict(
                backend="remote",
                server_url=server_url,
                user_token=user_token,
                timeout=timeout,
                episode_ids=episode_ids,
                session_id=session_id,
            )
        self._env = make_env(
            num_envs=num_envs,
            step_size=step_size,
            history=MAX_STEP_SIZE,
            seed=seed,
            auto_reset=False,
            privileged=not prod,
            max_steps_per_episode=max_steps_per_episode,
            **remote,
        )
        self.num_envs, self.prod, self.auto_reset = num_envs, prod, auto_reset
        self.return_all_states = return_all_states
        self.episode_ids = list(getattr(self._env.backend, "episode_ids", [f"local-{i}" for i in range(num_envs)]))
        self.session_id = getattr(self._env.backend, "session_id", None)
        try:
            import gymnasium as gym

            box = gym.spaces.Box(-np.inf, np.inf, shape=(NUM_FEATURES,), dtype=np.float32)
            self.observation_space = self.single_observation_space = box
            self.action_space = self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        except ImportError:  # spaces are a convenience of the [gym] extra
            pass
        self.terminateds = np.zeros(num_envs, dtype=bool)
        self.truncateds = np.zeros(num_envs, dtype=bool)
        self.active_envs = np.zeros(num_envs, dtype=bool)
        self.total_rewards = np.zeros(num_envs, dtype=np.float32)
        self._last_flight = np.full(num_envs, -1, dtype=np.int64)
        self._td = None

    # -- seed API -------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, list[dict]]:
        """Reset every env; `(observations (N, 9), infos)`."""
        return self._after_reset(self._env.reset(seed=seed), np.arange(self.num_envs))

    def reset_specific_envs(
        self, env_indices: list[int], seeds: list[int | None] | None = None
    ) -> tuple[np.ndarray, list[dict]]:
        """Reset the listed envs; `(observations (len, 9), infos)` in the order given."""
        if seeds is not None and len(seeds) != len(env_indices):
            raise ValueError("env_indices and seeds must have the same length")
        if seeds is not None and any(s is not None for s in seeds):
            raise NotImplementedError("per-env seeds are not supported: reset(seed=...) seeds every env")
        index = np.asarray(env_indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_envs):
            raise IndexError(f"env_indices must be in [0, {self.num_envs}), got {env_indices}")
        mask = torch.zeros(self.num_envs, dtype=torch.bool, device=self._env.device)
        mask[torch.as_tensor(index, dtype=torch.long)] = True
        return self._after_reset(self._env.reset(mask=mask), index)

    def step(self, actions, step_size: int | None = None, return_all_states: bool | None = None):
        """`(observations, rewards, terminateds, truncateds, infos)` like the seed client.

        `observations` is a list of `(rows, 9)` arrays (rows flown this step) when
        `return_all_states`, else an `(N, 9)` array of the newest rows.
        """
        if self._td is None:
            raise RuntimeError("call reset() before step()")
        all_states = self.return_all_states if return_all_states is None else return_all_states
        td = self._env.step(np.asarray(actions), step_size=step_size)
        window, flight = td["observation"].cpu().numpy(), td["flight"].cpu().numpy()
        new_rows = [window[i][flight[i] > self._last_flight[i]] for i in range(self.num_envs)]
        self._last_flight = flight[:, -1].copy()
        rewards = td["reward"].cpu().numpy()
        self.terminateds, self.truncateds = td["terminated"].cpu().numpy(), td["truncated"].cpu().numpy()
        self.active_envs = ~(self.terminateds | self.truncateds)
        self.total_rewards += rewards
        self._td = td
        observations = new_rows if all_states else window[:, -1].copy()
        return (
            observations,
            rewards,
            self.terminateds.copy(),
            self.truncateds.copy(),
            self._infos(td, range(self.num_envs)),
        )

    def get_terminated_env_indices(self) -> list[int]:
        """Indices of envs whose episode ended (terminated or truncated) and was not reset."""
        return [int(i) for i in np.flatnonzero(self.terminateds | self.truncateds)]

    def get_active_count(self) -> int:
        """How many envs are still in an episode."""
        return int(self.active_envs.sum())

    def get_episode_info(self) -> list[dict]:
        """Per-env step count, total reward and flags."""
        return self._infos(self._td, range(self.num_envs)) if self._td is not None else []

    def render(self, mode: str = "human") -> None:
        """Print a one-screen summary, like the seed client."""
        print(f"Vectorized environment - {self.num_envs} environments")
        print(f"Active environments: {self.get_active_count()}/{self.num_envs}")
        print(f"Total rewards: {self.total_rewards}")

    def close(self) -> None:
        """Release the backend (HTTP connection of a remote one)."""
        self._env.close()

    # -- internals ------------------------------------------------------------------------------
    def _after_reset(self, td, index: np.ndarray) -> tuple[np.ndarray, list[dict]]:
        self._td = td
        self._last_flight[index] = 0
        self.terminateds[index] = self.truncateds[index] = False
        self.active_envs[index] = True
        self.total_rewards[index] = 0.0
        return td["row"].cpu().numpy()[index], self._infos(td, index)

    def _infos(self, td, index) -> list[dict]:
        infos = []
        for i in index:
            info = {
                "step": int(self._last_flight[i]),
                "episode_id": self.episode_ids[i],
                "total_reward": float(self.total_rewards[i]),
                "terminated": bool(self.terminateds[i]),
                "truncated": bool(self.truncateds[i]),
            }
            if not self.prod and "health" in td.keys():
                info |= {
                    "degradation": 1.0 - float(td["health"][i]),
                    "health": float(td["health"][i]),
                    "wear_rate": float(td["wear_rate"][i]),
                }
            infos.append(info)
        return infos


class StudentGymEnv:
    """The seed's single-env client API: one engine, `step(action)` returns its rows."""

    def __init__(self, **kwargs: Any) -> None:
        self._vec = StudentGymEnvVectorized(num_envs=1, **kwargs)
        self.episode_id = self._vec.episode_ids[0]
        self.observation_space = getattr(self._vec, "observation_space", None)
        self.action_space = getattr(self._vec, "action_space", None)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        obs, infos = self._vec.reset(seed=seed)
        return obs[0], infos[0]

    def step(self, action: int, step_size: int | None = 10, return_all_states: bool = True):
        """`(observation, reward, terminated, truncated, info)`; a finished episode auto-resets first
        when `auto_reset` (the seed client's behaviour)."""
        if self._vec.get_terminated_env_indices() and self._vec.auto_reset:
            self._vec.reset_specific_envs([0])
        obs, rewards, term, trunc, infos = self._vec.step(
            [int(action)], step_size=step_size, return_all_states=return_all_states
        )
        return np.asarray(obs[0]), float(rewards[0]), bool(term[0]), bool(trunc[0]), infos[0]

    def get_episode_info(self) -> dict:
        return self._vec.get_episode_info()[0]

    def close(self) -> None:
        self._vec.close()


def create_student_gym_env_vectorized(
    server_url: str | None = None,
    user_token: str | None = None,
    env_type: str | None = None,
    num_envs: int = 4,
    max_steps_per_episode: int = 1000,
    auto_reset: bool = True,
    timeout: float = 30.0,
    prod: bool = True,
    step_size: int = 1,
    return_all_states: bool = True,
    episode_ids: list[str] | None = None,
    session_id: str | None = None,
    seed: int | None = None,
) -> StudentGymEnvVectorized:
    """The seed client's factory. Embedded simulator unless `server_url` or `$SERVER_URL` is set."""
    return StudentGymEnvVectorized(
        num_envs=num_envs,
        step_size=step_size,
        prod=prod,
        return_all_states=return_all_states,
        **_connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout),
        episode_ids=episode_ids,
        session_id=session_id,
        seed=seed,
    )


def create_student_gym_env(
    server_url: str | None = None,
    user_token: str | None = None,
    env_type: str | None = None,
    max_steps_per_episode: int | None = None,
    auto_reset: bool | None = None,
    timeout: float | None = None,
    prod: bool = True,
    step_size: int = 10,
    episode_id: str | None = None,
    session_id: str | None = None,
    seed: int | None = None,
) -> StudentGymEnv:
    """The seed client's single-env factory, same resolution of settings as the vectorized one."""
    return StudentGymEnv(
        step_size=step_size,
        prod=prod,
        **_connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout),
        episode_ids=[episode_id] if episode_id is not None else None,
        session_id=session_id,
        seed=seed,
    )

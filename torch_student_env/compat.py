"""The seed client's API as a drop-in: change `from student_client...` to `torch_student_env.compat`.

`create_student_gym_env_vectorized(...)` and `create_student_gym_env(...)` take the seed client's
parameters and return the same types (numpy arrays, ragged lists of `(rows, 9)` arrays, lists of
info dicts). They run on the embedded simulator unless a server URL is given (argument or
`$SERVER_URL`), in which case they speak the challenge protocol through the remote backend.

Like the client: the same defaults (`step_size` 10, 1,000 flights, `auto_reset`, `prod`), the
same settings from arguments, then `$VARS` and a `.env` file in the working directory, then
defaults; a sale returns its one row and a failure the rows flown; `plot_observations`,
`plot_rewards` and `get_leaderboard_score` with the client's signatures.

Differences from the seed client, all on the side of not losing information:
- errors raise (the seed client turned any error into "every env terminated");
- actions are checked: floats, strings and bools raise `TypeError` (the single-env client
  truncated 2.7 to a sale);
- `step` always returns one entry per env, in env order. With `auto_reset=False` the client
  leaves terminated envs out of its request, so its arrays are shorter than `num_envs` and
  positions shift; here a finished env that was not reset yields an empty `(0, 9)` array, zero
  reward and its final flags, so index i is always env i. With `auto_reset` (the default), as
  on the server, stepping a finished env starts its next episode first;
- the plots are returned as `matplotlib.figure.Figure` (shown by a notebook, saved with
  `savefig`) instead of `plt.show()`: no global pyplot state, no backend switch;
- without a server, `get_leaderboard_score` scores the episodes this process finished.

This module translates and keeps no episode state: the env holds every episode rule, and
`client_view` owns what a client sees of it (the settings of a client-style env, a step's rows,
the info dicts, the finished-episode records), as it does for the reference server. The `.env`
loader is `client_settings`, the plots `client_plots`.
"""

from __future__ import annotations

from collections import deque
from numbers import Integral
from typing import Any

import numpy as np

from torch_student_env.client_plots import plot_observations, plot_rewards
from torch_student_env.client_settings import connection_settings, load_dotenv, server_url_setting, user_token_setting
from torch_student_env.client_view import (
    ALREADY_TERMINATED,
    FIRST_FLIGHT_FAILURE,
    client_env_options,
    client_info,
    finished_episodes,
    on_host,
    step_rows,
)
from torch_student_env.config import MAX_SEED
from torch_student_env.leaderboard import SCORE_WINDOW, FinishedEpisode, as_client_entry, score_metrics
from torch_student_env.make import make_env
from torch_student_env.spec import (
    CLIENT_STEP_SIZE,
    CLIENT_STEPS_PER_EPISODE,
    CLIENT_TIMEOUT_S,
    DEFAULT_TOKEN,
    EPISODES_KEPT_PER_TOKEN,
    NUM_ACTIONS,
    NUM_FEATURES,
)

__all__ = [
    "StudentGymEnv",
    "StudentGymEnvVectorized",
    "create_student_gym_env",
    "create_student_gym_env_vectorized",
    "get_leaderboard_score",
    "load_dotenv",
    "plot_observations",
    "plot_rewards",
]

# Episodes finished through compat envs on the embedded simulator, per user token: what
# `get_leaderboard_score` scores when no server is given.
_FINISHED: dict[str, deque[FinishedEpisode]] = {}


class StudentGymEnvVectorized:
    """The seed's vectorized client API over a `TorchStudentEnv` (numpy in, numpy out)."""

    def __init__(
        self,
        num_envs: int = 4,
        step_size: int = CLIENT_STEP_SIZE,
        max_steps_per_episode: int = CLIENT_STEPS_PER_EPISODE,
        auto_reset: bool = True,
        prod: bool = True,
        return_all_states: bool = True,
        server_url: str | None = None,
        user_token: str | None = None,
        timeout: float = CLIENT_TIMEOUT_S,
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
            seed=seed,
            **client_env_options(auto_reset, hidden_state=not prod, max_steps_per_episode=max_steps_per_episode),
            **remote,
        )
        self.num_envs, self.prod, self.auto_reset = num_envs, prod, auto_reset
        self.step_size, self.user_token, self._remote = step_size, user_token or DEFAULT_TOKEN, bool(remote)
        self.return_all_states = return_all_states
        self._last_step: dict[str, np.ndarray] | None = None
        self.episode_ids = list(self._env.backend.episode_ids)
        self.session_id = self._env.backend.session_id
        try:
            import gymnasium as gym

            box = gym.spaces.Box(-np.inf, np.inf, shape=(NUM_FEATURES,), dtype=np.float32)
            self.observation_space = self.single_observation_space = box
            self.action_space = self.single_action_space = gym.spaces.Discrete(NUM_ACTIONS)
        except ImportError:  # spaces are a convenience of the [gym] extra
            pass

    # -- the client's attributes, read from the env ----------------------------------------------
    @property
    def terminateds(self) -> np.ndarray:
        """(N,) bool: each env's last step terminated its episode (sold or failed)."""
        return self._now("terminated")

    @property
    def truncateds(self) -> np.ndarray:
        """(N,) bool: each env's last step reached the flight limit."""
        return self._now("truncated")

    @property
    def active_envs(self) -> np.ndarray:
        """(N,) bool: envs in an episode."""
        return ~self._now("done") if self._env.has_reset else np.zeros(self.num_envs, dtype=bool)

    @property
    def total_rewards(self) -> np.ndarray:
        """(N,) float32: the reward of each env's current episode."""
        return self._now("return_so_far")

    # -- seed API -------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, list[dict]]:
        """Reset every env; `(observations (N, 9), infos)`."""
        td = on_host(self._env.reset(seed=seed))
        return td["row"], self._infos(td, range(self.num_envs))

    def reset_specific_envs(
        self, env_indices: list[int], seeds: list[int | None] | None = None
    ) -> tuple[np.ndarray, list[dict]]:
        """Reset the listed envs; `(observations (len, 9), infos)` in the order given.

        Env i reseeded with s replays engine i of an env made with `seed=s`, episode 0 on.
        """
        if seeds is not None and len(seeds) != len(env_indices):
            raise ValueError(
                f"env_indices and seeds must have the same length, got {len(env_indices)} and {len(seeds)}"
            )
        index = np.asarray(env_indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_envs):
            raise IndexError(f"env_indices must be in [0, {self.num_envs}), got {env_indices}")
        for s in seeds or ():  # the client's ValueError, before anything changes
            if s is not None and (isinstance(s, bool) or not isinstance(s, Integral) or not 0 <= s <= MAX_SEED):
                raise ValueError(f"seeds must be ints in [0, {MAX_SEED}] or None, got {s!r}")
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[index] = True
        if seeds is not None and any(s is not None for s in seeds):
            seeded = np.zeros(self.num_envs, dtype=bool)
            values: list[Any] = [0] * self.num_envs
            for i, s in zip(index, seeds, strict=True):
                if s is not None:
                    seeded[i], values[i] = True, s
            self._env.seed_engines(seeded, np.asarray(values, dtype=np.int64))
        td = on_host(self._env.reset(mask=mask))
        return td["row"][index], self._infos(td, index)

    def step(self, actions, step_size: int | None = None, return_all_states: bool | None = None):
        """`(observations, rewards, terminateds, truncateds, infos)` like the seed client.

        `observations` is a list of `(rows, 9)` arrays (rows flown this step) when
        `return_all_states`, else an `(N, 9)` array of the newest rows.
        """
        if not self._env.has_reset:
            raise RuntimeError("call reset() before step()")
        all_states = self.return_all_states if return_all_states is None else return_all_states
        td = on_host(self._env.step(np.asarray(actions), step_size=step_size))
        self._last_step = td  # the env's own outputs, for what the client's types cannot say
        self._record_finished(td)
        observations = [step_rows(td, i) for i in range(self.num_envs)] if all_states else td["row"]
        return observations, td["reward"], td["terminated"], td["truncated"], self._infos(td, range(self.num_envs))

    def get_terminated_env_indices(self) -> list[int]:
        """Indices of envs whose episode ended (terminated or truncated) and was not reset."""
        return [int(i) for i in np.flatnonzero(self._now("done"))]

    def get_active_count(self) -> int:
        """How many envs are still in an episode."""
        return int(self.active_envs.sum())

    def get_episode_info(self) -> list[dict]:
        """Per-env step count, total reward and flags."""
        if not self._env.has_reset:
            return []
        return self._infos(on_host(self._env.current()), range(self.num_envs))

    def render(self, mode: str = "human") -> None:
        """Print a one-screen summary, like the seed client."""
        print(f"Vectorized environment - {self.num_envs} environments")
        print(f"Active environments: {self.get_active_count()}/{self.num_envs}")
        print(f"Total rewards: {self.total_rewards}")

    def close(self) -> None:
        """Release the backend (HTTP connection of a remote one)."""
        self._env.close()

    # -- internals ------------------------------------------------------------------------------
    def _now(self, key: str) -> np.ndarray:
        """One key of `env.current()` (zeros before the first reset)."""
        if not self._env.has_reset:
            dtype = np.float32 if key == "return_so_far" else bool
            return np.zeros(self.num_envs, dtype=dtype)
        return self._env.current()[key].cpu().numpy()

    def _record_finished(self, td: dict[str, np.ndarray]) -> None:
        """Keep the episodes that ended in this step for `get_leaderboard_score` (embedded only:
        a server scores its own)."""
        if not self._remote and td["episode_ended"].any():
            _FINISHED.setdefault(self.user_token, deque(maxlen=EPISODES_KEPT_PER_TOKEN)).extend(finished_episodes(td))

    def _infos(self, td: dict[str, np.ndarray], index) -> list[dict]:
        """The client's info dicts for envs `index`, from the env's outputs (reset, step or current)."""
        return [client_info(td, i, self.episode_ids[i], hidden_state=not self.prod) for i in index]


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
        when `auto_reset` (the seed client's behaviour). Without `auto_reset`, stepping a finished
        episode returns what the seed client answers without asking the server: `(last row,
        0.0, True, False, {"message": "Episode already terminated"})`.

        A failure on the step's first flight returns what the seed client makes of the real
        server's error for it: `(last row (9,), 0.0, True, False, {"error": ..., "step": unchanged})`.
        The last row is still the newest of the env's window; the counter before the step is one
        less than after it (the failing flight counts as flown).
        """
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, Integral):
            raise TypeError(f"action must be an int in {{0, 1, 2}}, got {action!r} ({type(action).__name__})")
        env = self._vec._env
        if not self._vec.auto_reset and env.has_reset and not bool(env.active[0]):
            # the seed client answers this itself, without a request
            return self._last_row(), 0.0, True, False, {"message": ALREADY_TERMINATED}
        obs, rewards, term, trunc, infos = self._vec.step(np.array([int(action)]), step_size=step_size)
        if self._vec._last_step["failed_first_flight"][0]:
            # what the seed client makes of the real server's error for it; the failing flight
            # counts as flown, so the counter before the step is one less than after it
            error = f"Server error '500 Internal Server Error': {FIRST_FLIGHT_FAILURE}"
            return self._last_row(), 0.0, True, False, {"error": error, "step": infos[0]["step"] - 1}
        rows = np.asarray(obs[0])
        return (rows if return_all_states else rows[-1]), float(rewards[0]), bool(term[0]), bool(trunc[0]), infos[0]

    def _last_row(self) -> np.ndarray:
        """The newest row the episode flew (the seed client's `current_observation`)."""
        return self._vec._env.current()["row"][0].cpu().numpy()

    def get_episode_info(self) -> dict:
        return self._vec.get_episode_info()[0]

    def close(self) -> None:
        self._vec.close()


def create_student_gym_env_vectorized(
    server_url: str | None = None,
    user_token: str | None = None,
    env_type: str | None = None,
    num_envs: int = 4,
    max_steps_per_episode: int = CLIENT_STEPS_PER_EPISODE,
    auto_reset: bool = True,
    timeout: float = CLIENT_TIMEOUT_S,
    prod: bool = True,
    step_size: int = CLIENT_STEP_SIZE,
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
        **connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout),
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
    step_size: int = CLIENT_STEP_SIZE,
    episode_id: str | None = None,
    session_id: str | None = None,
    seed: int | None = None,
) -> StudentGymEnv:
    """The seed client's single-env factory, same resolution of settings as the vectorized one."""
    return StudentGymEnv(
        step_size=step_size,
        prod=prod,
        **connection_settings(max_steps_per_episode, auto_reset, server_url, user_token, timeout),
        episode_ids=[episode_id] if episode_id is not None else None,
        session_id=session_id,
        seed=seed,
    )


def get_leaderboard_score(
    user_token: str | None = None,
    server_url: str | None = None,
    limit: int = SCORE_WINDOW,
    return_dataframe: bool = True,
):
    """The client's `get_leaderboard_score`: the user's metrics over their last `limit` episodes.

    With a server (argument, `$SERVER_URL` or `.env`) it asks the server's score endpoint
    (`backends.remote.HttpClient`: a refusal raises its named error, `NotFoundError` for an
    unknown token); else
    it scores the episodes that compat envs on the embedded simulator finished in this process.
    A pandas `DataFrame` of one row (empty without episodes) if `return_dataframe`, else a dict.
    """
    load_dotenv()
    user_token, server_url = user_token_setting(user_token), server_url_setting(server_url)
    if isinstance(limit, bool) or not isinstance(limit, Integral) or not 1 <= limit <= EPISODES_KEPT_PER_TOKEN:
        raise ValueError(f"limit must be an int in [1, {EPISODES_KEPT_PER_TOKEN}], got {limit!r}")
    if server_url is None:
        metrics = score_metrics(list(_FINISHED.get(user_token, ())), limit)
    else:  # through the remote backend's client: its retries, deadline, size cap and named errors
        from urllib.parse import quote

        from torch_student_env.backends.remote import HttpClient

        client = HttpClient(server_url, user_token)
        try:
            path = f"/api/v1/user/{quote(user_token, safe='')}/score?limit={int(limit)}"
            metrics = client.request("GET", path, idempotent=True).get("metrics") or {}
        finally:
            client.close()
    entry = as_client_entry(user_token, metrics) if metrics else {}
    if not return_dataframe:
        return entry
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(
            "return_dataframe=True needs pandas (pip install pandas), or pass return_dataframe=False"
        ) from err
    return pd.DataFrame([entry]) if entry else pd.DataFrame()

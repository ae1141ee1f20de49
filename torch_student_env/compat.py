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
"""

from __future__ import annotations

import os
from collections import deque
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch_student_env.leaderboard import FinishedEpisode, as_client_entry, score_metrics
from torch_student_env.make import make_env
from torch_student_env.spec import DEFAULT_TOKEN, FEATURE_NAMES, MAX_STEP_SIZE, NUM_ACTIONS, NUM_FEATURES, Action

# Episodes finished through compat envs on the embedded simulator, per user token: what
# `get_leaderboard_score` scores when no server is given.
_FINISHED: dict[str, deque[FinishedEpisode]] = {}


def load_dotenv(path: str | Path = ".env") -> None:
    """Set `KEY=VALUE` lines of a `.env` file as environment variables, never overriding one
    already set (python-dotenv's default, which the client calls). Quotes and `export` are
    stripped; `#` starts a comment line. A missing file is not an error."""
    path = Path(path)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        os.environ.setdefault(key, value)


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
    """The settings both factories resolve from arguments, then environment variables (a `.env`
    file included), then defaults."""
    load_dotenv()
    return {
        "max_steps_per_episode": _setting(max_steps_per_episode, "MAX_STEPS_PER_EPISODE", 1000, int),
        "auto_reset": _setting(auto_reset, "AUTO_RESET", True, bool),
        "server_url": _setting(server_url, "SERVER_URL", None, str),
        "user_token": _setting(user_token, "USER_TOKEN", DEFAULT_TOKEN, str),
        "timeout": _setting(timeout, "TIMEOUT", 30.0, float),
    }


class StudentGymEnvVectorized:
    """The seed's vectorized client API over a `TorchStudentEnv` (numpy in, numpy out)."""

    def __init__(
        self,
        num_envs: int = 4,
        step_size: int = 10,
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
        self.step_size, self.user_token, self._remote = step_size, user_token or DEFAULT_TOKEN, bool(remote)
        self.return_all_states = return_all_states
        self.episode_ids = list(self._env.backend.episode_ids)
        self.session_id = self._env.backend.session_id
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
            raise ValueError(
                f"env_indices and seeds must have the same length, got {len(env_indices)} and {len(seeds)}"
            )
        index = np.asarray(env_indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_envs):
            raise IndexError(f"env_indices must be in [0, {self.num_envs}), got {env_indices}")
        for s in seeds or ():
            if s is not None and (isinstance(s, bool) or not isinstance(s, Integral) or not 0 <= s < 2**63):
                raise ValueError(f"seeds must be ints in [0, 2**63) or None, got {s!r}")
        mask = torch.zeros(self.num_envs, dtype=torch.bool, device=self._env.device)
        mask[torch.as_tensor(index, dtype=torch.long)] = True
        if seeds is not None and any(s is not None for s in seeds):
            # Env i reseeded with s replays engine i of an env made with seed=s, episode 0 on.
            seeded = torch.zeros_like(mask)
            values = torch.zeros(self.num_envs, dtype=torch.int64)
            for i, s in zip(index, seeds, strict=True):
                if s is not None:
                    seeded[int(i)], values[int(i)] = True, int(s)
            self._env.backend.seed_engines(seeded, values, torch.arange(self.num_envs))
        return self._after_reset(self._env.reset(mask=mask), index)

    def step(self, actions, step_size: int | None = None, return_all_states: bool | None = None):
        """`(observations, rewards, terminateds, truncateds, infos)` like the seed client.

        `observations` is a list of `(rows, 9)` arrays (rows flown this step) when
        `return_all_states`, else an `(N, 9)` array of the newest rows.
        """
        if self._td is None:
            raise RuntimeError("call reset() before step()")
        all_states = self.return_all_states if return_all_states is None else return_all_states
        finished = np.flatnonzero(self.terminateds | self.truncateds)
        if self.auto_reset and finished.size:
            # What the server does with auto_reset: a finished episode's next step starts a new one.
            self.reset_specific_envs(finished.tolist())
        td = self._env.step(np.asarray(actions), step_size=step_size)
        window, flight = td["observation"].cpu().numpy(), td["flight"].cpu().numpy()
        new_rows = [window[i][flight[i] > self._last_flight[i]] for i in range(self.num_envs)]
        self._last_flight = flight[:, -1].copy()
        rewards = td["reward"].cpu().numpy()
        self._record_finished(td)
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
    def _record_finished(self, td) -> None:
        """Keep the episodes that ended in this step for `get_leaderboard_score` (embedded only:
        a server scores its own)."""
        if self._remote:
            return
        newly = (td["done"] & ~torch.as_tensor(self.terminateds | self.truncateds, device=td.device)).cpu().numpy()
        if not newly.any():
            return
        kept = _FINISHED.setdefault(self.user_token, deque(maxlen=1000))
        for i in np.flatnonzero(newly):
            kept.append(
                FinishedEpisode.now(
                    float(td["episode_return"][i]),
                    int(td["episode_repairs"][i]),
                    int(td["episode_length"][i]),
                    bool(td["episode_failed"][i]),
                )
            )

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
        self._last_row: np.ndarray | None = None  # what the client shows after the server's error
        self._last_step = 0

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        obs, infos = self._vec.reset(seed=seed)
        self._last_row, self._last_step = obs[0], infos[0]["step"]
        return obs[0], infos[0]

    def step(self, action: int, step_size: int | None = 10, return_all_states: bool = True):
        """`(observation, reward, terminated, truncated, info)`; a finished episode auto-resets first
        when `auto_reset` (the seed client's behaviour).

        A failure on the step's first flight returns what the seed client makes of the real
        server's error for it: `(last row (9,), 0.0, True, False, {"error": ..., "step": unchanged})`.
        """
        if isinstance(action, (bool, np.bool_)) or not isinstance(action, Integral):
            raise TypeError(f"action must be an int in {{0, 1, 2}}, got {action!r} ({type(action).__name__})")
        if self._vec.get_terminated_env_indices() and self._vec.auto_reset:
            self._vec.reset_specific_envs([0])
        obs, rewards, term, trunc, infos = self._vec.step(np.array([int(action)]), step_size=step_size)
        rows = np.asarray(obs[0])
        if term[0] and len(rows) == 0:  # failed on the first flight: no row
            error = "Server error '500 Internal Server Error': engine failed on the first flight of the step"
            return self._last_row, 0.0, True, False, {"error": error, "step": self._last_step}
        self._last_row, self._last_step = rows[-1], infos[0]["step"]
        return (rows if return_all_states else rows[-1]), float(rewards[0]), bool(term[0]), bool(trunc[0]), infos[0]

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
    step_size: int = 10,
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


def plot_observations(
    observations: list[np.ndarray],
    actions: list[int] | None = None,
    sensor_names: list[str] | None = None,
    figsize: tuple = (12, 4),
    title: str = "Observation Dimensions Over Time",
):
    """The client's `plot_observations`: each of the 9 dimensions over the concatenated steps.

    `observations` is a list of per-step arrays (`(rows, 9)`, or one `(9,)` row); a repair (1) or
    sale (2) in `actions` (one per step) marks the first row of its step. Returns a
    `matplotlib.figure.Figure` with one axis per dimension (`figsize` is per dimension).
    """
    from torch_student_env.plotting import _figure

    batches = [np.atleast_2d(np.asarray(o, dtype=np.float32)) for o in observations]
    batches = [b for b in batches if b.size]
    names = list(sensor_names) if sensor_names is not None else list(FEATURE_NAMES)
    if len(names) != NUM_FEATURES:
        raise ValueError(f"sensor_names must name {NUM_FEATURES} dimensions, got {len(names)}")
    if actions is not None and len(actions) != len(observations):
        raise ValueError(f"actions must have one entry per observation batch: {len(actions)} for {len(observations)}")
    fig = _figure(figsize=(figsize[0], figsize[1] * NUM_FEATURES))
    axes = fig.subplots(NUM_FEATURES, 1, sharex=True)
    if not batches:
        axes[0].set_title("no observations")
        return fig
    rows = np.concatenate(batches)
    starts = np.cumsum([0] + [len(b) for b in batches[:-1]])
    for d, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.plot(rows[:, d], linewidth=1.0)
        ax.set_title(f"{title}: {name}", fontsize=9)
        for start, action in zip(starts, actions or (), strict=False):
            if action in (Action.REPAIR, Action.SELL):
                color = "tab:green" if action == Action.REPAIR else "tab:purple"
                ax.axvline(start, color=color, linewidth=1.0, alpha=0.8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("flight (concatenated steps; green: repair, purple: sale)")
    return fig


def plot_rewards(
    rewards: list[float],
    actions: list[int] | None = None,
    figsize: tuple = (12, 6),
    title: str = "Step Rewards Over Time",
):
    """The client's `plot_rewards`: step rewards (colored by action) with their total in the
    legend. Returns a `matplotlib.figure.Figure`."""
    from torch_student_env.plotting import _figure

    rewards = np.asarray(rewards, dtype=np.float64)
    fig = _figure(figsize=figsize)
    ax = fig.subplots()
    ax.plot(rewards, color="black", linewidth=1.0, label=f"step reward (total {rewards.sum():,.1f})")
    if actions is not None:
        acts = np.asarray(actions)
        for action, color in ((Action.REPAIR, "tab:green"), (Action.SELL, "tab:purple")):
            where = np.flatnonzero(acts == action)
            ax.scatter(where, rewards[where], color=color, zorder=3, label=action.name.lower().replace("_", " "))
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set(xlabel="step", ylabel="reward", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def get_leaderboard_score(
    user_token: str | None = None,
    server_url: str | None = None,
    limit: int = 100,
    return_dataframe: bool = True,
):
    """The client's `get_leaderboard_score`: the user's metrics over their last `limit` episodes.

    With a server (argument, `$SERVER_URL` or `.env`) it asks the server's score endpoint; else
    it scores the episodes that compat envs on the embedded simulator finished in this process.
    A pandas `DataFrame` of one row (empty without episodes) if `return_dataframe`, else a dict.
    """
    load_dotenv()
    user_token = _setting(user_token, "USER_TOKEN", DEFAULT_TOKEN, str)
    server_url = _setting(server_url, "SERVER_URL", None, str)
    if isinstance(limit, bool) or not isinstance(limit, Integral) or not 1 <= limit <= 1000:
        raise ValueError(f"limit must be an int in [1, 1000], got {limit!r}")
    if server_url is None:
        metrics = score_metrics(list(_FINISHED.get(user_token, ())), limit)
    else:
        import requests

        response = requests.get(
            f"{server_url.rstrip('/')}/api/v1/user/{user_token}/score", params={"limit": limit}, timeout=30
        )
        if response.status_code != 200:
            raise ValueError(f"Could not retrieve user score: HTTP {response.status_code} ({response.text[:200]})")
        metrics = response.json().get("metrics") or {}
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

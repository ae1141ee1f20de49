"""What a client of the challenge's server sees of the env: the one owner of that view.

The env holds every episode rule and says what happened in its outputs (`flew`,
`failed_first_flight`, `new_rows`, the episode totals). This module turns those outputs into
what crosses the wire: the settings of an env that behaves as one client-side group, the rows
a step returns, the info dicts, the records of finished episodes. The reference server
(`server.groups`) answers with it, `compat` returns it in the seed client's types, and
`evaluation.runners` scores its streams with its records: none of them re-derives a rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from torch_student_env.leaderboard import FinishedEpisode
from torch_student_env.spec import MAX_STEP_SIZE, AutoresetMode

# What the seed clients say, word for word, and what the server answers where they expect it.
ALREADY_TERMINATED = "Episode already terminated"  # the single-env client, stepping a finished episode
FINISHED_NOT_RESET = "episode finished: reset it to continue"  # the server, for a group without auto_reset
FIRST_FLIGHT_FAILURE = "engine failed on the first flight of the step"  # the server's 500 (its logs)


def client_env_options(auto_reset: bool, hidden_state: bool, max_steps_per_episode: int) -> dict[str, Any]:
    """`make_env` options of an env that behaves as a group of the challenge's server.

    - `auto_reset` is the server's rule: a finished episode restarts when it is next stepped
      ("next_step"); without it the episode waits for a reset ("disabled"; `spec.AutoresetMode`
      says what `auto_reset` means where);
    - the window holds `MAX_STEP_SIZE` rows, because a step returns every row it flew, at any
      step size up to 50;
    - no final windows: a client reads a step's rows, not a terminal window;
    - `hidden_state` exposes health (the server's info, the client's `prod=False`).
    """
    return dict(
        history=MAX_STEP_SIZE,
        autoreset_mode=AutoresetMode.NEXT_STEP if auto_reset else AutoresetMode.DISABLED,
        privileged=hidden_state,
        max_steps_per_episode=max_steps_per_episode,
        final_observation=False,
    )


def on_host(td) -> dict[str, np.ndarray]:
    """An env output as numpy arrays, read to the host once (every view below reads these)."""
    return {key: value.cpu().numpy() for key, value in td.items()}


def newest(window: Any, k: int) -> Any:
    """The newest `k` rows of one engine's window (array or tensor, rows first): what a step
    that flew `k` rows returns of it."""
    return window[len(window) - k :]


def step_rows(out: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Engine i's rows of a step, (k, 9): the newest `new_rows` of its window (none when it did
    not fly, or failed on the step's first flight)."""
    return newest(out["observation"][i], int(out["new_rows"][i]))


def hidden_info(out: dict[str, np.ndarray], i: int, rows: int) -> dict[str, Any]:
    """Engine i's hidden state, as the challenge server sends it (its client shows it only with
    `prod=False`): health now, `degradation = 1 - health`, and the health of its newest `rows`
    window rows."""
    health = float(out["health"][i])
    return {
        "degradation": 1.0 - health,
        "health": health,
        "wear_rate": float(out["wear_rate"][i]),
        "repairs": int(out["repairs"][i]),
        "health_rows": newest(out["window_health"][i], rows).tolist(),
    }


def reset_info(out: dict[str, np.ndarray], i: int, episode_id: str, hidden_state: bool) -> dict[str, Any]:
    """The server's info for engine i's fresh episode."""
    info: dict[str, Any] = {"step": 0, "episode_id": episode_id, "total_reward": 0.0}
    return info | hidden_info(out, i, 1) if hidden_state else info


def step_info(out: dict[str, np.ndarray], i: int, episode_id: str, hidden_state: bool) -> dict[str, Any]:
    """The server's info for engine i after a step: the counter, the episode's reward so far, and
    for an engine that flew whether it failed, its repairs and why the episode ended."""
    info: dict[str, Any] = {
        "step": int(out["age"][i]),
        "episode_id": episode_id,
        "total_reward": float(out["return_so_far"][i]),
    }
    if not out["flew"][i]:
        return info | {"message": FINISHED_NOT_RESET}
    failed = bool(out["episode_failed"][i])
    info |= {"failed": failed, "repairs": int(out["repairs"][i])}
    if out["terminated"][i]:
        info["reason"] = "failure" if failed else "sold"
    elif out["truncated"][i]:
        info["reason"] = "time limit"
    return info | hidden_info(out, i, int(out["new_rows"][i])) if hidden_state else info


def client_info(out: dict[str, np.ndarray], i: int, episode_id: str, hidden_state: bool) -> dict[str, Any]:
    """The seed client's info dict for engine i (reset, step or `current` outputs): the counter,
    the episode id, its reward so far and the last step's flags; with `hidden_state` (the
    client's `prod=False`) the server's hidden fields too."""
    info: dict[str, Any] = {
        "step": int(out["age"][i]),
        "episode_id": episode_id,
        "total_reward": float(out["return_so_far"][i]) if "return_so_far" in out else 0.0,
        "terminated": bool(out["terminated"][i]) if "terminated" in out else False,
        "truncated": bool(out["truncated"][i]) if "truncated" in out else False,
    }
    if hidden_state and "health" in out:
        rows = int(out["new_rows"][i]) if "new_rows" in out else 1
        info |= hidden_info(out, i, rows)
    return info


# What `finished_episodes` reads of a step's outputs (a caller may read only these to the host).
EPISODE_KEYS = ("episode_ended", "episode_return", "episode_length", "episode_repairs", "episode_failed")


def finished_episodes(out: dict[str, np.ndarray]) -> list[FinishedEpisode]:
    """The leaderboard records of the episodes that ended in a step, in engine order."""
    return [
        FinishedEpisode.now(
            float(out["episode_return"][i]),
            int(out["episode_repairs"][i]),
            int(out["episode_length"][i]),
            bool(out["episode_failed"][i]),
        )
        for i in np.flatnonzero(out["episode_ended"])
    ]

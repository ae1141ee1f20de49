"""Logged episodes of the challenge's server: reading them, and where each step stands.

An episode log is JSON Lines, one object per episode with at least `actions`, `rewards`, `steps`
(the server's flight counter after each step) and `cause` (`failure` or `sold`): the format of
the students' logs that `../shared/data/real_server/` holds. Optional fields: `agent_name` (the
policy that played it; the tables are per policy), `obs` (the last row of each step, 9
features), `rows` (every row of each step) and `server_error_at_end` (the failing step was
answered with HTTP 500: the failure fell on the step's first flight). Nothing here needs torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch_student_env.spec import NUM_FEATURES, Action

MAX_EPISODE_BYTES = 4 << 20  # a logged episode of 1,000 flights is about 100 kB


@dataclass(frozen=True)
class LoggedEpisode:
    """One real episode: what was done, what was paid and what was seen, step by step."""

    actions: tuple[int, ...]  # one per step
    rewards: tuple[float, ...]  # one per step
    flights: tuple[int, ...]  # the server's flight counter after each step
    rows: tuple[tuple[float, ...], ...] | None  # the last row of each step, 9 features (None: not logged)
    failed: bool  # ended by a catastrophic failure (else sold)
    first_flight_failure: bool = False  # failed on its last step's first flight: no row, reward 0
    rows_per_step: tuple[int, ...] | None = None  # rows each step returned (None: not logged)
    agent: str = "unnamed"  # the policy that played it

    @property
    def total(self) -> float:
        """The episode's return."""
        return float(sum(self.rewards))

    def failure_flight(self) -> int | None:
        """The flight at which the engine failed, or None if it was sold.

        The server's counter reads the failing flight, except when the failure falls on a step's
        first flight: the server answers that step with an error, which the clients log as a
        counter of 0 (vectorised) or unchanged (single engine); that flight is the one after the
        previous step's last.
        """
        if not self.failed:
            return None
        before = self.flights[-2] if len(self.flights) > 1 else 0
        return before + 1 if self.first_flight_failure else self.flights[-1]


@dataclass(frozen=True)
class StepContext:
    """Where a step of an episode stands: the coordinates that the fidelity tables pool by."""

    action: int
    repairs_before: int  # repairs done before this step
    since_repair: int  # fly steps since the last repair (or the episode's start) before this one
    age: int  # flights flown before this step
    terminal: bool  # the episode's last step


def load_episodes(path: str | Path) -> list[LoggedEpisode]:
    """Read an episode log, checking every record; raises ValueError naming the bad line.

    Episodes without an `agent_name` are named after the file (`exploration_episodes`)."""
    episodes = []
    with open(path, encoding="utf-8") as handle:
        # readline with a cap: a file with one enormous line is refused without reading it whole
        for number, line in enumerate(iter(lambda: handle.readline(MAX_EPISODE_BYTES + 1), ""), start=1):
            if len(line) > MAX_EPISODE_BYTES:
                raise ValueError(f"{path}:{number}: episode record over {MAX_EPISODE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                episodes.append(_episode(record, default_agent=Path(path).stem))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not an episode record ({err})") from err
    if not episodes:
        raise ValueError(f"{path} holds no episodes")
    return episodes


def _episode(record: dict, default_agent: str) -> LoggedEpisode:
    actions = tuple(int(a) for a in record["actions"])
    rewards = tuple(float(r) for r in record["rewards"])
    flights = tuple(int(s) for s in record["steps"])
    rows = tuple(tuple(float(v) for v in row) for row in record["obs"]) if "obs" in record else None
    if not (len(actions) == len(rewards) == len(flights) == len(rows or actions)) or not actions:
        raise ValueError("actions, rewards, steps and obs must be non-empty lists of one length")
    if any(a not in tuple(Action) for a in actions):
        raise ValueError(f"actions must be in {{0, 1, 2}}, got {sorted(set(actions))}")
    if rows is not None and any(len(row) != NUM_FEATURES for row in rows):
        raise ValueError(f"every obs row must have {NUM_FEATURES} values")
    if record["cause"] not in ("failure", "sold"):
        raise ValueError(f"cause must be 'failure' or 'sold', got {record['cause']!r}")
    failed = record["cause"] == "failure"
    before = flights[-2] if len(flights) > 1 else 0
    # single-engine client: counter unchanged and the flag; vectorised client: counter 0
    first_flight = failed and (bool(record.get("server_error_at_end")) or flights[-1] == 0 or flights[-1] == before)
    rows_per_step = None
    if "rows" in record:
        rows_per_step = [len(step) for step in record["rows"]]
        if len(rows_per_step) != len(actions):
            raise ValueError("rows must hold one list of rows per step")
        if first_flight:  # the client repeats its last row for the step the server answered with an error
            rows_per_step[-1] = 0
        rows_per_step = tuple(rows_per_step)
    agent = str(record.get("agent_name", default_agent))
    return LoggedEpisode(actions, rewards, flights, rows, failed, first_flight, rows_per_step, agent)


def step_contexts(actions: list[int] | tuple[int, ...], step_size: int = 10) -> list[StepContext]:
    """The context of each step of an action sequence (a sale flies one flight, others `step_size`)."""
    contexts, repairs, since, age = [], 0, 0, 0
    for i, action in enumerate(actions):
        contexts.append(StepContext(action, repairs, since, age, i == len(actions) - 1))
        if action == Action.REPAIR:
            repairs, since = repairs + 1, 0
        elif action == Action.DO_NOTHING:
            since += 1
        age += 1 if action == Action.SELL else step_size
    return contexts

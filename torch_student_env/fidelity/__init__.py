"""Fidelity of the embedded simulator to the challenge's server: replay real episodes, compare.

`python -m torch_student_env.fidelity EPISODES.jsonl` replays each logged episode's own actions on
simulated engines and prints real against simulated figures with the targets they must meet.
"""

from torch_student_env.fidelity.compare import Check, compare, summarize
from torch_student_env.fidelity.data import LoggedEpisode, load_episodes, step_contexts
from torch_student_env.fidelity.replay import replay, schedule

__all__ = ["Check", "LoggedEpisode", "compare", "load_episodes", "replay", "schedule", "step_contexts", "summarize"]

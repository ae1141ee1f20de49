"""The embedded simulator as a backend: N engines as tensors on one device."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

import torch

from torch_student_env.backends.base import C, Finish, R
from torch_student_env.config import check_seed, check_state_keys, check_state_tensor
from torch_student_env.sim import rng
from torch_student_env.sim.engine import EngineState, SimTables, Transition, advance, restart_engines, sim_step
from torch_student_env.sim.params import SimParams


class LocalBackend:
    """Runs `sim.engine` on `device`. Env i's episode k is keyed by hash(seed, i, k) alone.

    `fast=True` runs a whole `step` (advance, the resets of ended engines and the env's half)
    through `torch.compile` as one graph of fused loops. Outputs equal eager ones to float32
    rounding (tests/test_fast_path.py).
    """

    def __init__(
        self,
        num_envs: int,
        device: torch.device,
        max_flights: int,
        params: SimParams,
        seed: int,
        fast: bool = False,
        env_offset: int = 0,
    ) -> None:
        self.num_envs = num_envs
        self.device = device
        self.max_flights = max_flights
        self.tables = SimTables(params, device)
        self.fast = fast
        self.env_offset = env_offset
        self._step_graphs: dict = {}  # finish function -> (compiled) sim_step + finish
        self._state: EngineState | None = None
        self.seed(seed)

    def seed(self, seed: int) -> None:
        """Restart every engine's episode counter under `seed` (the next reset is episode 0).

        Engine i is keyed as engine `env_offset + i` of the seed: shards reproduce one big env.
        """
        self._seed = seed
        env_index = self.env_offset + torch.arange(self.num_envs, device=self.device, dtype=torch.int64)
        self._env_key = rng.fold(rng.seed_key(seed, self.device), env_index)  # (N,) int32
        self._episode = torch.full((self.num_envs,), -1, dtype=torch.int64, device=self.device)

    def seed_engines(self, mask: torch.Tensor, seeds: torch.Tensor, env_indices: torch.Tensor) -> None:
        """Re-key the masked engines as engine `env_indices[i]` of root seed `seeds[i]`.

        Their next reset is episode 0 of that key, exactly what a `LocalBackend` seeded with
        `seeds[i]` gives its engine `env_indices[i]`: this is how a server reproduces a client's
        local rows engine by engine.
        """
        keys = rng.fold(rng.seed_key(seeds, self.device), env_indices.to(self.device))
        self._env_key = torch.where(mask, keys, self._env_key)
        self._episode = torch.where(mask, -1, self._episode)

    def reset(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Start the next episode of the masked engines; first rows (N, 10) for all."""
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        # Eager even on the fast path: resets outside `step` are rare, and compiling this graph
        # would double the one-off compile time (auto-resets are compiled inside `step`).
        self._state, self._episode, first_rows = restart_engines(
            self._state, self._env_key, self._episode, mask, self.tables
        )
        return first_rows

    def advance(self, actions: torch.Tensor, active: torch.Tensor, n_rows: int) -> Transition:
        """Act and fly up to `n_rows` flights (see `sim.engine.advance`)."""
        self._state, transition = advance(self._state, actions, active, n_rows, self.max_flights, self.tables)
        return transition

    def step(
        self,
        actions: torch.Tensor,
        active: torch.Tensor,
        n_rows: int,
        reset_ended: bool,
        finish: Finish[C, R],
        carry: C,
    ) -> R:
        """Act, fly, restart the ended engines (see `sim.engine.sim_step`), then `finish`.

        On the fast path the simulator's half and `finish` (the env's half) are one compiled graph.
        """
        self._state, self._episode, result = self._step_graph(finish)(
            self._state,
            self._env_key,
            self._episode,
            actions,
            active,
            n_rows,
            self.max_flights,
            self.tables,
            reset_ended,
            carry=carry,
        )
        return result

    def _step_graph(self, finish: Callable) -> Callable:
        """`sim_step` followed by `finish`, compiled once per `finish` on the fast path."""
        graph = self._step_graphs.get(finish)
        if graph is None:

            def graph(*sim_step_args, carry):
                state, episode, transition, first_rows = sim_step(*sim_step_args)
                return state, episode, finish(carry, transition, first_rows)

            graph = torch.compile(graph, dynamic=False) if self.fast else graph
            self._step_graphs[finish] = graph
        return graph

    def privileged(self) -> dict[str, torch.Tensor]:
        """Hidden state of the current engines: health, wear rate, repair count."""
        s = self._state
        return {"health": s.health.clone(), "wear_rate": s.wear_rate.clone(), "repairs": s.repairs.clone()}

    def state_dict(self) -> dict[str, Any]:
        """Seed, episode counters and every engine tensor (cloned)."""
        engines = {k: v.clone() for k, v in asdict(self._state).items()} if self._state is not None else None
        return {"seed": self._seed, "episode": self._episode.clone(), "engines": engines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (tensors moved to this backend's device); checked whole first."""
        check_state_keys("backend checkpoint", state, {"seed", "episode", "engines"})
        seed = check_seed(state["seed"])
        episode = check_state_tensor("episode", state["episode"], self._episode)
        engines = state["engines"]
        if engines is not None:
            names = {f.name for f in fields(EngineState)}
            check_state_keys("engine checkpoint", engines, names)
            like = {"episode_key": self._env_key, "flights": self._episode, "repairs": self._episode}
            for name in names:
                check_state_tensor(name, engines[name], like.get(name, self._env_key.float()))
        self.seed(seed)
        self._episode = episode.to(self.device).clone()
        self._state = (
            None if engines is None else EngineState(**{k: v.to(self.device).clone() for k, v in engines.items()})
        )

    def close(self) -> None:
        """Nothing to release."""

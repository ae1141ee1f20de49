"""The embedded simulator as a backend: N engines as tensors on one device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from torch_student_env.config import check_seed, check_state_keys, check_state_tensor
from torch_student_env.eager import below_autograd
from torch_student_env.sim import rng
from torch_student_env.sim.engine import EngineState, SimTables, restart_engines, sim_step
from torch_student_env.sim.params import SimParams
from torch_student_env.types import Transition


@dataclass(frozen=True)
class SimState:
    """Everything of the simulator that changes, as tensors: what `LocalBackend.kernel` threads."""

    engines: EngineState | None  # None before the first reset
    env_key: torch.Tensor  # (N,) int32: hash of (seed, env index), roots each engine's episodes
    episode: torch.Tensor  # (N,) int64: episodes started per engine (-1 before the first)


def simulate(
    sim: SimState,
    actions: torch.Tensor,
    active: torch.Tensor,
    step_size: int,
    reset_ended: bool,
    max_steps_per_episode: int,
    tables: SimTables,
) -> tuple[SimState, Transition, torch.Tensor | None]:
    """The transition as a pure function: the next `SimState`, the transition, the first rows.

    Module-level, with its constants as arguments, so that every env of one configuration
    shares one compiled graph.
    """
    engines, episode, transition, first_rows = sim_step(
        sim.engines, sim.env_key, sim.episode, actions, active, step_size, max_steps_per_episode, tables, reset_ended
    )
    return SimState(engines, sim.env_key, episode), transition, first_rows


def restart(
    sim: SimState, mask: torch.Tensor, max_steps_per_episode: int, tables: SimTables
) -> tuple[SimState, torch.Tensor]:
    """The next episode of the masked engines as a pure function: the next `SimState` and the
    first rows (N, 10) (meaningful where masked). Takes the kernel's constants, as `simulate`."""
    engines, episode, first_rows = restart_engines(sim.engines, sim.env_key, sim.episode, mask, tables)
    return SimState(engines, sim.env_key, episode), first_rows


class LocalBackend:
    """Runs `sim.engine` on `device`. Env i's episode k is keyed by hash(seed, i, k) alone.

    `kernel` (= `simulate`) is the transition as a pure function of `SimState` and
    `kernel_constants`; `transition` applies it to the backend's own `sim`. The env composes
    the kernel with its half of a step (and compiles the whole when `fast`).
    """

    kernel = staticmethod(simulate)
    restart_kernel = staticmethod(restart)

    def __init__(
        self,
        num_envs: int,
        device: torch.device,
        max_steps_per_episode: int,
        params: SimParams | Sequence[SimParams],
        seed: int,
        env_offset: int = 0,
    ) -> None:
        self.num_envs = num_envs
        self.device = device
        self.max_steps_per_episode = max_steps_per_episode
        self.tables = SimTables(params, device)
        self.env_offset = env_offset
        self.session_id = None  # no server
        self._seed = seed
        self.sim = SimState(None, *self._keys(seed))

    @property
    def episode_ids(self) -> list[str]:
        """Local names of the engines (`compat` shows them as episode ids), built when asked: an
        env of a million engines should not carry a million strings."""
        return [f"local-{self.env_offset + i}" for i in range(self.num_envs)]

    def seed(self, seed: int) -> None:
        """Restart every engine's episode counter under `seed` (the next reset is episode 0)."""
        self._seed = seed
        self.sim = SimState(self.sim.engines, *self._keys(seed))

    def _keys(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each engine's key and episode counter under `seed`.

        Engine i is keyed as engine `env_offset + i` of the seed: shards reproduce one big env.
        """
        env_index = self.env_offset + torch.arange(self.num_envs, device=self.device, dtype=torch.int64)
        env_key = rng.fold(rng.seed_key(seed, self.device), env_index)  # (N,) int32
        return env_key, torch.full((self.num_envs,), -1, dtype=torch.int64, device=self.device)

    def seed_engines(self, mask: torch.Tensor, seeds: torch.Tensor, env_indices: torch.Tensor) -> None:
        """Re-key the masked engines as engine `env_indices[i]` of root seed `seeds[i]`.

        Their next reset is episode 0 of that key, exactly what a `LocalBackend` seeded with
        `seeds[i]` gives its engine `env_indices[i]`: this is how a server reproduces a client's
        local rows engine by engine.
        """
        keys = rng.fold(rng.seed_key(seeds, self.device), env_indices.to(self.device))
        sim = self.sim
        self.sim = SimState(sim.engines, torch.where(mask, keys, sim.env_key), torch.where(mask, -1, sim.episode))

    def reset(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Start the next episode of the masked engines; first rows (N, 10) for all."""
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        # Eager even for a fast env: resets outside `step` are rare, and compiling them would
        # double the one-off compile (auto-resets inside `step` are part of its compiled graph).
        with below_autograd():
            self.sim, first_rows = restart(self.sim, mask, *self.kernel_constants())
        return first_rows

    def kernel_constants(self) -> tuple[int, SimTables]:
        """The arguments of `kernel` after `reset_ended`: what stays fixed for this backend."""
        return self.max_steps_per_episode, self.tables

    def transition(
        self, actions: torch.Tensor, active: torch.Tensor, step_size: int, reset_ended: bool
    ) -> tuple[Transition, torch.Tensor | None]:
        """Act, fly, and restart the ended engines if asked (see `sim.engine.sim_step`)."""
        with below_autograd():
            self.sim, transition, first_rows = simulate(
                self.sim, actions, active, step_size, reset_ended, *self.kernel_constants()
            )
        return transition, first_rows

    def privileged(self) -> dict[str, torch.Tensor]:
        """Hidden state of the current engines: health and wear rate."""
        s = self.sim.engines
        return {"health": s.health.clone(), "wear_rate": s.wear_rate.clone()}

    def state_dict(self) -> dict[str, Any]:
        """Seed, each engine's key (which `seed_engines` may have changed) and episode counter,
        and every engine tensor (cloned)."""
        engines = self.sim.engines
        engines = {k: v.clone() for k, v in asdict(engines).items()} if engines is not None else None
        return {
            "seed": self._seed,
            "env_key": self.sim.env_key.clone(),
            "episode": self.sim.episode.clone(),
            "engines": engines,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict` (tensors moved to this backend's device); checked whole first."""
        check_state_keys("backend checkpoint", state, {"seed", "env_key", "episode", "engines"})
        seed = check_seed(state["seed"])
        env_key = check_state_tensor("env_key", state["env_key"], self.sim.env_key)
        episode = check_state_tensor("episode", state["episode"], self.sim.episode)
        engines = state["engines"]
        if engines is not None:
            names = {f.name for f in fields(EngineState)}
            check_state_keys("engine checkpoint", engines, names)
            counters = ("flights", "repairs", "variant")
            like = {"episode_key": self.sim.env_key} | dict.fromkeys(counters, self.sim.episode)
            for name in names:
                check_state_tensor(name, engines[name], like.get(name, self.sim.env_key.float()))
        self._seed = seed
        self.sim = SimState(
            None if engines is None else EngineState(**{k: v.to(self.device).clone() for k, v in engines.items()}),
            env_key.to(self.device).clone(),
            episode.to(self.device).clone(),
        )

    def close(self) -> None:
        """Nothing to release."""

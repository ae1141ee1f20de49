"""The episode rules as pure functions of tensors: what the env keeps per engine between steps
(`EpisodeBuffers`), how a step pushes rows, counts and ends episodes (`window_step`), how an
episode restarts (`restart_episodes`), and the whole step with a backend's kernel (`pure_step`).

Pure, so that the fast path (`fast_path`) compiles them whole; `env.TorchStudentEnv` is the public
API around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from torch_student_env.sim.engine import none_of
from torch_student_env.spec import NUM_FEATURES, ROW_WIDTH, Action
from torch_student_env.types import Transition
from torch_student_env.window import push_rows

_REPAIR = int(Action.REPAIR)  # a plain int: compiled code compares IntEnums as False


@dataclass(frozen=True)
class EpisodeBuffers:
    """What the env keeps per engine between steps (the backend keeps the engines themselves).

    Engines are the first dimension of the window (the simulator keeps them last): each engine's
    window is one contiguous (W, 10) block, so shifting rows in is a contiguous copy per engine,
    and the (N, W, 9) observation handed out is a view of it (`window.push_rows`).
    """

    window: torch.Tensor  # (N, W, 10) float32: the 9 features + hidden health of the last W rows
    window_flight: torch.Tensor  # (N, W) int64: flight index of each row, -1 = padding; oldest first
    active: torch.Tensor  # (N,) bool: in an episode (False: finished, awaiting its restart)
    last_terminated: torch.Tensor  # (N,) bool: flags that engines not flown repeat
    last_truncated: torch.Tensor  # (N,) bool
    return_so_far: torch.Tensor  # (N,) float32: reward of the current episode
    age: torch.Tensor  # (N,) int64: flights flown in the current episode (the server's counter)
    since_repair: torch.Tensor  # (N,) int64: flights since the last repair (or the start)
    repairs: torch.Tensor  # (N,) int64: repairs done in the current episode


def empty_buffers(num_envs: int, history: int, device: torch.device) -> EpisodeBuffers:
    """Buffers before the first reset: padding everywhere, no engine active."""
    flags = torch.zeros(num_envs, dtype=torch.bool, device=device)
    counts = torch.zeros(num_envs, dtype=torch.int64, device=device)
    return EpisodeBuffers(
        window=torch.zeros(num_envs, history, ROW_WIDTH, device=device),
        window_flight=torch.full((num_envs, history), -1, dtype=torch.int64, device=device),
        active=flags,
        last_terminated=flags,
        last_truncated=flags,
        return_so_far=torch.zeros(num_envs, device=device),
        age=counts,
        since_repair=counts,
        repairs=counts,
    )


def restart_episodes(buffers: EpisodeBuffers, mask: torch.Tensor, first_rows: torch.Tensor) -> EpisodeBuffers:
    """Masked engines get a fresh window (padding, then their reset row, flight 0) and bookkeeping.

    `first_rows` (N, 10) as the backend returns them.
    """
    window, window_flight = buffers.window, buffers.window_flight
    # Selects on the slot index rather than a concatenated fresh window: nothing extra to allocate.
    newest = torch.arange(window.shape[1], device=window.device) == window.shape[1] - 1  # (W,)
    # contiguous rows: the backend's are a view of engines-last memory, which `where` would copy
    fresh = torch.where(newest.unsqueeze(1), first_rows.contiguous().unsqueeze(1), 0.0)  # (N, W, 10)
    return EpisodeBuffers(
        window=torch.where(mask.view(-1, 1, 1), fresh, window),
        window_flight=torch.where(mask.unsqueeze(1), torch.where(newest, 0, -1), window_flight),
        active=buffers.active | mask,
        last_terminated=buffers.last_terminated & ~mask,
        last_truncated=buffers.last_truncated & ~mask,
        return_so_far=torch.where(mask, 0.0, buffers.return_so_far),
        age=torch.where(mask, 0, buffers.age),
        since_repair=torch.where(mask, 0, buffers.since_repair),
        repairs=torch.where(mask, 0, buffers.repairs),
    )


def window_step(
    buffers: EpisodeBuffers,
    transition: Transition,
    actions: torch.Tensor,
    stepped: torch.Tensor,
    first_rows: torch.Tensor | None,
    final_observation: bool = True,
) -> tuple[EpisodeBuffers, dict[str, torch.Tensor]]:
    """The env's side of a step: push the flown rows, count, build the outputs, restart the ended.

    `stepped` (N,) are the engines that flew (in an episode and asked to step); the others earn 0
    and repeat their last flags. `first_rows` (N, 10) are the backend's fresh episodes (same-step
    autoreset), or None to leave the ended engines inactive (the same thing when none ended).
    The player-side counters are counted here from the actions and the backend's flight counter,
    which is all a client of the real server has. `final_observation=False` leaves out the
    `FINAL_KEYS`. A pure function of tensors, so the fast path compiles it whole.
    """
    n_new = transition.row_flown.sum(1)  # 0 for engines that did not fly
    # the simulator's rows are a view of engines-last memory: one copy of K rows makes the W-row shift contiguous
    window = push_rows(buffers.window, transition.rows.contiguous(), n_new)
    window_flight = push_rows(buffers.window_flight, transition.row_flight, n_new)
    terminated = torch.where(stepped, transition.terminated, buffers.last_terminated)
    truncated = torch.where(stepped, transition.truncated, buffers.last_truncated)
    reward = torch.where(stepped, transition.reward, 0.0)
    ended = transition.ended(stepped)  # finished in this call
    age = torch.where(stepped, transition.flights, buffers.age)
    repaired = stepped & (actions == _REPAIR)  # paid before the step's flights
    since_repair = torch.where(repaired, 0, buffers.since_repair) + (age - buffers.age)
    repairs = buffers.repairs + repaired.long()
    return_so_far = buffers.return_so_far + reward
    out = {
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
        "done": terminated | truncated,
        "new_rows": n_new,
        "flew": stepped,
        # the real server answers this with an error and no row (docs/protocol.md)
        "failed_first_flight": ended & transition.failed & (n_new == 0),
        "episode_ended": ended,
        "episode_return": torch.where(ended, return_so_far, 0.0),
        "episode_length": torch.where(ended, age, 0),
        "episode_repairs": torch.where(ended, repairs, 0),
        "episode_failed": ended & transition.failed,
    }
    if final_observation:  # by far the largest outputs: (N, W, 9) written every step, mostly zeros
        out["final_observation"] = torch.where(ended.view(-1, 1, 1), window[..., :NUM_FEATURES], 0.0)
        out["final_valid"] = ended.unsqueeze(1) & (window_flight >= 0)
        out["final_flight"] = torch.where(ended.unsqueeze(1), window_flight, -1)
        out["final_since_repair"] = torch.where(ended, since_repair, 0)
    buffers = EpisodeBuffers(
        window=window,
        window_flight=window_flight,
        active=buffers.active if first_rows is not None else buffers.active & ~ended,
        last_terminated=terminated,
        last_truncated=truncated,
        return_so_far=return_so_far,
        age=age,
        since_repair=since_repair,
        repairs=repairs,
    )
    if first_rows is not None:
        buffers = restart_episodes(buffers, ended, first_rows)
    out["return_so_far"] = buffers.return_so_far  # of the current episode: 0 for one restarted here
    return buffers, out


StepFn = Callable[[EpisodeBuffers, torch.Tensor, torch.Tensor, int], tuple[EpisodeBuffers, dict[str, torch.Tensor]]]


def pure_step(
    kernel, restart_kernel, constants, sim, buffers, actions, mask, step_size, reset_ended, final_observation
):
    """A backend's pure kernel, then `window_step`: the whole step as a function of tensors.

    With a `restart_kernel` (next-step autoreset), finished engines asked to fly start their next
    episode first, in the same graph, and fly it with the action given."""
    if restart_kernel is not None:
        waiting = mask & ~buffers.active
        if not none_of(waiting):
            sim, first_rows = restart_kernel(sim, waiting, *constants)
            buffers = restart_episodes(buffers, waiting, first_rows)
    stepped = buffers.active & mask
    sim, transition, first_rows = kernel(sim, actions, stepped, step_size, reset_ended, *constants)
    return (sim, *window_step(buffers, transition, actions, stepped, first_rows, final_observation))

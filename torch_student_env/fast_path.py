"""How an env's step runs: eagerly, through a compiled library (CPU), or through `torch.compile`
(accelerators). `compose_step` picks one; the env only calls what it returns.

On the CPU a fast env never waits for a compiler (`CompiledStep`): its configuration's library is
loaded from disk if it is there; otherwise it is built in a process of its own
(`compiled.start_build`, which runs `build_from_spec`) while the env steps eagerly, and the env
moves to the library between two steps once it is ready. Both run `episode.pure_step`, so the
episodes are the same before and after the move (equal to float rounding, tests/test_fast_path.py).
`wait_compiled=True` waits for the library instead, for runs that must replay bit for bit
whatever the state of the cache.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from torch_student_env import compiled
from torch_student_env.backends.base import Backend
from torch_student_env.eager import below_autograd
from torch_student_env.episode import EpisodeBuffers, StepFn, empty_buffers, pure_step, restart_episodes, window_step

log = logging.getLogger("torch_student_env")

# Each distinct (num_envs, step_size, history, device, params, options) is one graph; dynamo's default of 8
# per function would silently fall back to eager after 8 configurations in one process.
FAST_PATH_GRAPHS = 64
_POLL_SECONDS = 0.5  # how often a building env looks whether its library is ready
_warned: set[str] = set()  # compile failures already reported in this process


def compose_step(
    backend: Backend,
    reset_ended: bool,
    fast: bool,
    final_observation: bool = True,
    step_size: int = 10,
    history: int = 10,
    wait_compiled: bool = False,
    restart_waiting: bool = False,
) -> StepFn:
    """The whole step, `(buffers, actions, mask, step_size) -> (buffers, outputs)`: the backend's
    transition of the engines in an episode and in `mask` (with the restart of ended engines when
    `reset_ended`), then `episode.window_step`. `restart_waiting` (next-step autoreset) first
    restarts the finished engines in `mask`, which then fly.

    A backend with a pure kernel (the embedded simulator) is composed as one pure function of
    tensors: the simulator's state goes in and out explicitly. When `fast`, that function is
    compiled: on the CPU ahead of time for any number of engines (`CompiledStep`, for the
    configured `step_size`; other per-call step sizes run eagerly), elsewhere by `torch.compile`.
    Others (the remote backend) run their transition eagerly.
    """
    kernel = backend.kernel
    if kernel is None:

        def transition_step(buffers, actions, mask, step_size):
            if restart_waiting:  # a host sync, which a backend of host-side answers pays anyway
                waiting = mask & ~buffers.active
                if bool(waiting.any()):
                    with below_autograd():
                        buffers = restart_episodes(buffers, waiting, backend.reset(waiting))
            stepped = buffers.active & mask
            transition, first_rows = backend.transition(actions, stepped, step_size, reset_ended)
            with below_autograd():
                return window_step(buffers, transition, actions, stepped, first_rows, final_observation)

        return transition_step
    eager = _eager_step(backend, reset_ended, final_observation, restart_waiting)
    if not fast:
        return eager
    if backend.device.type != "cpu":
        return _jit_step(backend, reset_ended, final_observation, restart_waiting)
    key = step_key(backend, reset_ended, final_observation, step_size, history, restart_waiting)
    return CompiledStep(backend, eager, key, wait_compiled)


def _kernels(backend: Backend, restart_waiting: bool) -> tuple[Callable, Callable | None, tuple]:
    """What `pure_step` takes of a backend: its kernel, its restart kernel where waiting engines
    restart in the step (else None), and their constants."""
    return backend.kernel, backend.restart_kernel if restart_waiting else None, backend.kernel_constants()


def _eager_step(backend: Backend, reset_ended: bool, final_observation: bool, restart_waiting: bool) -> StepFn:
    kernels = _kernels(backend, restart_waiting)

    def eager(buffers, actions, mask, step_size):
        with below_autograd():
            backend.sim, buffers, out = pure_step(
                *kernels, backend.sim, buffers, actions, mask, step_size, reset_ended, final_observation
            )
        return buffers, out

    return eager


# The JIT path for accelerators: one compiled function for every fast env; envs of the same shapes
# and constants share its graph (dynamo guards on the kernel, the shapes and the constants'
# values, not on the env). CPU envs use the ahead-of-time library of `compiled` instead.
@functools.cache
def _compiled_pure_step() -> Callable:
    """`torch.compile(pure_step)`, made on first use (importing the compiler costs a second)."""
    return torch.compile(pure_step, dynamic=False)


def _jit_step(backend: Backend, reset_ended: bool, final_observation: bool, restart_waiting: bool) -> StepFn:
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, FAST_PATH_GRAPHS)
    kernels = _kernels(backend, restart_waiting)

    def jit_step(buffers, actions, mask, step_size):
        args = (*kernels, backend.sim, buffers, actions, mask, step_size, reset_ended, final_observation)
        backend.sim, buffers, out = _compiled_pure_step()(*args)
        return buffers, out

    return jit_step


class CompiledStep:
    """A fast CPU env's step: its configuration's library once it is ready, eager until then.

    `status` says where it stands: "building" (eager, the library is being built), "compiled",
    or "unavailable" (eager for good: this machine cannot compile, after one warning).
    `prepare()` (the env's first reset) loads the library or starts its build, and never waits;
    with `wait_compiled` the first step waits for the build to end instead of stepping eagerly.
    """

    def __init__(
        self,
        backend: Backend,
        eager: StepFn,
        key: compiled.StepKey,
        wait_compiled: bool,
    ) -> None:
        self.backend, self.eager, self.key, self.wait_compiled = backend, eager, key, wait_compiled
        self.step_size = key.step_size
        self.status = "building"
        self.eager_steps = 0
        self._run: compiled.Runner | None = None
        self._names: list[str] = []
        self._build: compiled.Build | None = None
        self._next_poll = 0.0

    def prepare(self) -> None:
        """Load the library, or start building it; never waits."""
        if self._run is not None or self.status == "unavailable" or self._build is not None:
            return
        if self._load():
            return
        reason = compiled.remembered_failure(self.key)
        if reason is not None:
            self._unavailable(reason)
            return
        try:
            self._build = compiled.start_build(self.key, build_spec(self.key, self.backend))
        except OSError as err:  # a cache folder that cannot be written, no interpreter to start
            self._unavailable(f"cannot start a build in {compiled.cache_dir()}: {err}")
            return
        self._started = time.monotonic()

    def wait(self, timeout: float | None = None) -> str:
        """Wait up to `timeout` seconds (None: however long it takes) for the build, and move to
        the library if it is ready; the status then."""
        self.prepare()
        if self._run is None and self._build is not None and self.status == "building":
            self._settle(self._build.wait(timeout))
        return self.status

    def __call__(self, buffers: EpisodeBuffers, actions: torch.Tensor, mask: torch.Tensor, step_size: int):
        if self._run is None:
            if self.status == "building" and self.wait_compiled:
                self.wait()
            elif self.status == "building" and time.monotonic() >= self._next_poll:
                self._poll()
            if self._run is None or step_size != self.step_size:
                self.eager_steps += 1
                return self.eager(buffers, actions, mask, step_size)
        elif step_size != self.step_size:
            return self.eager(buffers, actions, mask, step_size)
        backend = self.backend
        # The library was compiled for contiguous inputs and does not check strides: a state
        # tensor laid out otherwise (a restart's window follows the simulator's engines-last
        # rows) would be read wrongly. `contiguous` returns a contiguous tensor as it is.
        inputs = [t.contiguous() for t in (*compiled.flatten(backend.sim), *compiled.flatten(buffers))]
        flat = self._run([*inputs, actions.contiguous(), mask.contiguous()])
        backend.sim, start = compiled.unflatten(backend.sim, flat)
        buffers, start = compiled.unflatten(buffers, flat, start)
        return buffers, dict(zip(self._names[start:], flat[start:], strict=True))

    def _poll(self) -> None:
        self._next_poll = time.monotonic() + _POLL_SECONDS
        self.prepare()  # nothing to do once it ran (at the first reset); a restored checkpoint may skip that
        if self._build is not None:
            self._settle(self._build.poll())

    def _settle(self, outcome: str | None) -> None:
        """Act on a build's outcome: load the library when it is ready, warn when it failed."""
        if outcome is None:
            return
        if outcome == "ready" and self._load():
            log.info(
                "torch_student_env: the env step now runs compiled (%s), after %d eager steps in %.1f s",
                self._build.path.name,
                self.eager_steps,
                time.monotonic() - self._started,
            )
        else:
            self._unavailable(outcome if outcome != "ready" else "the built library did not load")

    def _load(self) -> bool:
        loaded = compiled.load(self.key)
        if loaded is None:
            return False
        self._run, self._names = loaded
        self.status = "compiled"
        return True

    def _unavailable(self, reason: str) -> None:
        self.status = "unavailable"
        compiled.stats.failed += 1
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(
                f"torch_student_env could not compile the env step ({reason}); stepping eagerly, "
                "which is several times slower at small batches. make_env(fast=False) asks for that "
                "without this warning.",
                RuntimeWarning,
                stacklevel=_user_stacklevel(),
            )


def _user_stacklevel() -> int:
    """The `stacklevel` of the first frame outside this package (a warning names the user's line,
    whichever of the env's calls noticed the failure)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package + os.sep + "torch_student_env"):
        level, frame = level + 1, frame.f_back
    return level


# -- what a build process needs ---------------------------------------------------------------------
def step_key(
    backend: Backend,
    reset_ended: bool,
    final_observation: bool,
    step_size: int,
    history: int,
    restart_waiting: bool = False,
) -> compiled.StepKey:
    """The configuration of a backend's compiled step (what fixes its library)."""
    max_steps, tables = backend.kernel_constants()
    return compiled.StepKey(
        step_size=step_size,
        history=history,
        reset_ended=reset_ended,
        final_observation=final_observation,
        num_envs=backend.num_envs if backend.num_envs >= compiled.STATIC_MIN_ENVS else None,
        device_type=backend.device.type,
        constants=repr((max_steps, tables.variants)),
        restart_waiting=restart_waiting,
    )


def build_spec(key: compiled.StepKey, backend: Backend) -> dict[str, Any]:
    """What a build process rebuilds `key`'s step from (`build_from_spec`), as JSON-able values."""
    max_steps, tables = backend.kernel_constants()
    return {
        "step_size": key.step_size,
        "history": key.history,
        "reset_ended": key.reset_ended,
        "restart_waiting": key.restart_waiting,
        "final_observation": key.final_observation,
        "num_envs": key.num_envs,
        "max_steps_per_episode": max_steps,
        "models": [asdict(params) for params in tables.variants],
        "library": compiled.library_path(key).name,  # the build checks it rebuilt the same key
    }


def build_from_spec(spec: dict[str, Any]) -> None:
    """Compile the library a `build_spec` describes (the build process's work); raises
    `compiled.CompileUnavailable` when this machine cannot, ValueError for a spec that does not
    describe the library it names."""
    from torch_student_env.backends.local import LocalBackend
    from torch_student_env.sim.params import SimParams

    models = [SimParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}) for m in spec["models"]]
    num_envs = spec["num_envs"] or compiled.DYNAMIC_TRACE_ENVS
    cpu = torch.device("cpu")
    backend = LocalBackend(num_envs, cpu, spec["max_steps_per_episode"], models, seed=0)
    reset_ended, final_observation, step_size = spec["reset_ended"], spec["final_observation"], spec["step_size"]
    restart_waiting = bool(spec.get("restart_waiting", False))
    key = step_key(backend, reset_ended, final_observation, step_size, spec["history"], restart_waiting)
    if compiled.library_path(key).name != spec["library"]:
        raise ValueError(f"the spec describes {compiled.library_path(key).name}, not {spec['library']}")
    everyone = torch.ones(num_envs, dtype=torch.bool)
    with below_autograd():
        buffers = restart_episodes(empty_buffers(num_envs, spec["history"], cpu), everyone, backend.reset(None))
    sim_like, kernels = backend.sim, _kernels(backend, restart_waiting)

    def flat_step(flat: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        sim, start = compiled.unflatten(sim_like, flat)
        state, start = compiled.unflatten(buffers, flat, start)
        actions, mask = flat[start], flat[start + 1]
        args = (sim, state, actions, mask, step_size, reset_ended, final_observation)
        sim, state, out = pure_step(*kernels, *args)
        carried = [*compiled.flatten(sim), *compiled.flatten(state)]
        return {f"state.{i}": t for i, t in enumerate(carried)} | out

    # contiguous, as every call's inputs are (a library compiled for one engine count is traced on these)
    example = [t.contiguous() for t in (*compiled.flatten(sim_like), *compiled.flatten(buffers))]
    actions = torch.zeros(num_envs, dtype=torch.int64)
    compiled.build(key, flat_step, [*example, actions, actions >= 0])

"""The whole step compiled ahead of time: one graph per step configuration, any number of engines,
kept on disk so that a new process loads it instead of compiling again.

The step (`env._pure_step`: the simulator's kernel, then the env's window update) is exported
with `torch.export`, compiled by AOTInductor into a shared library, and called through the
library's runner with flat lists of tensors: no guards, no Python wrappers around the call,
which at 4 engines makes a step 0.13 ms instead of 0.27 ms through `torch.compile`
(docs/benchmarks.md). What fixes a library is the configuration (`StepKey`).

Below `STATIC_MIN_ENVS` engines one library serves every engine count; from there on each
engine count gets its own. Measured here (docs/benchmarks.md): with the engine count a symbol,
inductor's loops over flattened (flights x engines) ranges divide and take the remainder by that
symbol for every element, and it decides at compile time, from the size it is traced at, whether
a loop runs on several threads. Traced at 4 engines, the shared library runs every loop on one
thread, which suits small batches (no OpenMP fork per loop on every step), and its per-element
index arithmetic costs little there; at thousands of engines a library compiled for that
count is 2-4x faster (constant index arithmetic, loops split over the threads). A user at scale
picks one size, and pays one compile for it, once per machine.

Where compiling is not possible (no C++ compiler, a torch build without inductor, an
unsupported platform), `load_or_compile` raises `CompileUnavailable` and the env steps eagerly
after one warning that says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch

log = logging.getLogger("torch_student_env")

# Below this many engines one library serves every engine count; from it on, each engine count
# gets its own (see the module docstring).
STATIC_MIN_ENVS = 256
_DYNAMIC_TRACE_ENVS = 4  # the engine count the shared library is traced (and tuned) at
# Store an intermediate buffer once it is 8 ops deep instead of recomputing it in every consumer
# (inductor's default is 30): compiles in 23 s instead of 30 s and runs 1.3-1.6x faster here.
_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 8}
# The modules whose code is compiled into the step: a change in any of them is a new library.
_SOURCES = ("env.py", "window.py", "types.py", "spec.py", "backends/local.py", "sim/engine.py", "sim/rng.py")
CACHE_ENV_VAR = "TORCH_STUDENT_ENV_CACHE_DIR"


class CompileUnavailable(RuntimeError):
    """The step cannot be compiled here; the message says why."""


@dataclass(frozen=True)
class StepKey:
    """Everything that fixes the compiled graph besides the engine count."""

    step_size: int
    history: int
    reset_ended: bool
    final_observation: bool
    num_envs: int | None  # None: any number of engines (below STATIC_MIN_ENVS)
    device_type: str
    constants: str  # the kernel's constants (flight limit, model tables) as text


@dataclass
class Stats:
    """What this process compiled and loaded (tests and benchmarks read it)."""

    compiled: int = 0
    loaded: int = 0
    failed: int = 0


stats = Stats()
Runner = Callable[[list[torch.Tensor]], list[torch.Tensor]]
_loaded: dict[StepKey, tuple[Runner, list[str]]] = {}  # per configuration, shared by every env of it


def cache_dir() -> Path:
    """Where compiled steps are kept: `$TORCH_STUDENT_ENV_CACHE_DIR`, else a folder inside
    PyTorch's inductor cache (`$TORCHINDUCTOR_CACHE_DIR`, by default /tmp/torchinductor_<user>)."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return Path(inductor_cache_dir()) / "torch_student_env"


def _source_hash() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


# Read once, when the package is imported: the code this process runs, even if the files change
# on disk while it runs (a library compiled later is keyed by what it was compiled from).
_SOURCE_HASH = _source_hash()


def _library_path(key: StepKey) -> Path:
    text = "|".join(
        (repr(key), torch.__version__, sys.version, platform.machine(), repr(_INDUCTOR_OPTIONS), _SOURCE_HASH)
    )
    return cache_dir() / f"step-{hashlib.sha256(text.encode()).hexdigest()[:24]}.pt2"


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def flatten(tree, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The tensors of nested dataclasses, in field order (the runner's inputs and outputs)."""
    out = [] if out is None else out
    for name in _field_names(type(tree)):
        value = getattr(tree, name)
        if isinstance(value, torch.Tensor):
            out.append(value)
        else:
            flatten(value, out)
    return out


def unflatten(like, flat: list[torch.Tensor], start: int = 0):
    """Rebuild dataclasses shaped like `like` from `flat[start:]`; returns (tree, next index)."""
    values = []
    for name in _field_names(type(like)):
        value = getattr(like, name)
        if isinstance(value, torch.Tensor):
            values.append(flat[start])
            start += 1
        else:
            value, start = unflatten(value, flat, start)
            values.append(value)
    return type(like)(*values), start


def load_or_compile(
    key: StepKey, step: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]], example: list[torch.Tensor]
) -> tuple[Runner, list[str]]:
    """`(run, names)` for `key`, from this process, from disk, or compiled: `run(flat inputs)`
    returns the values of `step`'s output dict, in the order of `names`.

    `step(flat) -> dict` is the step on a flat list of tensors whose first dimension is the
    engines; `example` are such inputs for any engine count (only their shapes past the engine
    dimension and their dtypes matter). Raises `CompileUnavailable` when this machine cannot
    compile.
    """
    if key in _loaded:
        return _loaded[key]
    path = _library_path(key)
    if not path.exists():
        _compile(key, step, example, path)
    try:
        model = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    except Exception as err:  # a truncated or foreign file: compile it again once
        log.warning("torch_student_env: reloading the compiled step failed (%s); compiling it again", err)
        path.unlink(missing_ok=True)
        _compile(key, step, example, path)
        model = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    stats.loaded += 1
    # The runner itself: AOTICompiledModel.__call__ re-reads its pytree specs on every call (37 us).
    _loaded[key] = model.loader.run, model.get_metadata()["names"].split(",")
    return _loaded[key]


def _compile(key: StepKey, step: Callable, example: list[torch.Tensor], path: Path) -> None:
    engines = f"{key.num_envs:,} engines" if key.num_envs is not None else f"1-{STATIC_MIN_ENVS - 1} engines"
    log.warning(
        "torch_student_env: compiling the env step for step_size=%d, history=%d, %s (once per configuration, "
        "about 30 s; later processes load it from %s)",
        key.step_size,
        key.history,
        engines,
        path.parent,
    )
    start = time.perf_counter()
    try:
        dynamic = None
        if key.num_envs is None:
            example = [t.new_zeros((_DYNAMIC_TRACE_ENVS, *t.shape[1:])) for t in example]
            engines = torch.export.Dim("N", min=1)
            dynamic = ([{0: engines} for _ in example],)
        names: list[str] = []  # of the outputs, known once traced (a local: export restores module attributes)

        def traced(flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
            out = step(flat)
            names[:] = list(out)
            return tuple(out.values())

        module = _FlatStep(traced)
        with warnings.catch_warnings():  # torch's own deprecation notices from inside export
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.pt2")
            options = _INDUCTOR_OPTIONS | {"aot_inductor.metadata": {"names": ",".join(names)}}
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=options)
                os.replace(partial, path)  # atomic: a concurrent process sees no file or a whole one
            finally:
                partial.unlink(missing_ok=True)
    except Exception as err:
        stats.failed += 1
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CompileUnavailable(f"{type(err).__name__}: {first_line}") from err
    stats.compiled += 1
    log.info("torch_student_env: compiled the env step in %.1f s", time.perf_counter() - start)


class _FlatStep(torch.nn.Module):
    """`torch.export` takes modules: the step on a flat list of tensors, returning a tuple."""

    def __init__(self, step: Callable[[list[torch.Tensor]], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.step = step

    def forward(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.step(flat)

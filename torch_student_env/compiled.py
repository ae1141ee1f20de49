"""The whole step compiled ahead of time: one library per step configuration, any number of
engines, kept on disk, built in a process of its own so that nobody waits for it.

The step (`episode.pure_step`: the simulator's kernel, then the env's window update) is exported
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
count is 2-4x faster (constant index arithmetic, loops split over the threads).

Building takes 20-60 s on a cold cache, so it never happens in the user's process: `start_build`
runs it in a child process (`python -m torch_student_env.build`, at low priority, its output in
a log file beside the libraries) while the env steps eagerly, and the env moves to the library
once it is there (`fast_path.CompiledStep`). Builds are safe to share and to interrupt:
- one lock file per library: two processes that need it at once build it once, the second
  waits and loads what the first wrote; the lock dies with its process;
- a library is written under a temporary name and renamed into place, so a build killed
  midway leaves nothing that could be loaded (and the next build removes its leftovers);
- a file that does not load (truncated, foreign) is removed and built again;
- the C++ compiler is tried on a one-line file before anything is exported, and a failure is
  remembered on disk (`remembered_failure`) for this torch, Python, machine and compiler, so a
  machine without one pays for the attempt once, not in every process.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import torch

log = logging.getLogger("torch_student_env")

# Below this many engines one library serves every engine count; from it on, each engine count
# gets its own (see the module docstring).
STATIC_MIN_ENVS = 256
DYNAMIC_TRACE_ENVS = 4  # the engine count the shared library is traced (and tuned) at
# Store an intermediate buffer once it is 8 ops deep instead of recomputing it in every consumer
# (inductor's default is 30): compiles in 23 s instead of 30 s and runs 1.3-1.6x faster here.
_INDUCTOR_OPTIONS = {"realize_opcount_threshold": 8}
# The modules whose code is compiled into the step: a change in any of them is a new library.
_SOURCES = (
    "episode.py", "fast_path.py", "window.py", "types.py", "spec.py", "backends/local.py", "sim/engine.py",
    "sim/rng.py",
)  # fmt: skip
CACHE_ENV_VAR = "TORCH_STUDENT_ENV_CACHE_DIR"
# A build process exits with this code when compiling is impossible here (the reason is on disk).
UNAVAILABLE_EXIT_CODE = 3


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
    restart_waiting: bool = False  # next-step autoreset: waiting engines restart inside the step


@dataclass
class Stats:
    """What this process built, loaded and started (tests and benchmarks read it)."""

    compiled: int = 0  # libraries this process compiled itself (a build process counts its own)
    loaded: int = 0  # libraries loaded from disk
    failed: int = 0  # builds that failed, or were known to fail, for an env of this process
    started: int = 0  # build processes started


stats = Stats()
Runner = Callable[[list[torch.Tensor]], list[torch.Tensor]]
_loaded: dict[StepKey, tuple[Runner, list[str]]] = {}  # per configuration, shared by every env of it
_builds: dict[StepKey, Build] = {}  # build processes this process started, by configuration
_builds_lock = threading.Lock()  # a server's request threads may start or poll builds at once


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


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def library_path(key: StepKey) -> Path:
    """The file of `key`'s library (it may not exist yet)."""
    text = (repr(key), torch.__version__, sys.version, platform.machine(), repr(_INDUCTOR_OPTIONS), _SOURCE_HASH)
    return cache_dir() / f"step-{_digest(*text)}.pt2"


# -- failures, remembered --------------------------------------------------------------------------
def _compiler_identity() -> str:
    """The C++ compiler inductor would call (`$CXX`, else its default), as a path with its size and
    time: installing or changing one makes a remembered failure stale."""
    name = os.environ.get("CXX") or ("cl" if os.name == "nt" else "clang++" if sys.platform == "darwin" else "g++")
    found = shutil.which(name)
    if found is None:
        return f"{name}: not found"
    status = os.stat(found)
    return f"{name}: {os.path.realpath(found)} {status.st_size} {status.st_mtime_ns}"


def _no_compiler_path() -> Path:
    """Where a failed compiler check is remembered, for this torch, Python, machine and compiler."""
    return (
        cache_dir()
        / f"no-compiler-{_digest(torch.__version__, sys.version, platform.machine(), _compiler_identity())}.txt"
    )


def _failure_path(key: StepKey) -> Path:
    """Where a failed build of `key` is remembered (beside its library, keyed as it is)."""
    return library_path(key).with_suffix(".failed")


def remembered_failure(key: StepKey) -> str | None:
    """Why compiling `key` failed on this machine before (no compiler, or this configuration), or
    None when nothing failed (or something changed since: torch, the compiler, the code)."""
    for path in (_no_compiler_path(), _failure_path(key)):
        with contextlib.suppress(OSError):
            return path.read_text().strip() or "unknown reason"
    return None


def _remember(path: Path, reason: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}")
    partial.write_text(reason + "\n")
    os.replace(partial, path)


# -- loading ----------------------------------------------------------------------------------------
def load(key: StepKey) -> tuple[Runner, list[str]] | None:
    """`(run, names)` of `key`'s library, from this process or from disk; None when it is not on disk
    (or did not load, in which case the file is removed so that a build replaces it).

    `run(flat inputs)` returns the values of the step's output dict, in the order of `names`.
    """
    if key in _loaded:
        return _loaded[key]
    path = library_path(key)
    if not path.exists():
        return None
    try:
        model = torch._inductor.aoti_load_package(str(path), run_single_threaded=True)
    except Exception as err:  # a truncated or foreign file: build it again
        log.warning("torch_student_env: the compiled step %s did not load (%s); building it again", path.name, err)
        path.unlink(missing_ok=True)
        return None
    stats.loaded += 1
    # The runner itself: AOTICompiledModel.__call__ re-reads its pytree specs on every call (37 us).
    _loaded[key] = model.loader.run, model.get_metadata()["names"].split(",")
    return _loaded[key]


# -- building (in the build process) -------------------------------------------------------------
@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing); the system drops it when the holder
    dies, so a killed build never blocks the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if os.name == "nt":
            import msvcrt

            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def check_compiler() -> None:
    """Compile a one-line shared library with the C++ compiler inductor would use, or raise
    `CompileUnavailable` saying why: seconds, where a failed export and code generation cost 26 s."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        cxx = get_cpp_compiler()
    except Exception as err:
        raise CompileUnavailable(f"no working C++ compiler ({type(err).__name__}: {_first_line(err)})") from err
    if os.name == "nt":  # cl takes other flags; finding it is what get_cpp_compiler checked
        return
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.cpp"
        source.write_text('extern "C" int probe() { return 42; }\n')
        command = [cxx, "-shared", "-fPIC", str(source), "-o", str(Path(tmp) / "probe.so")]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as err:
            raise CompileUnavailable(f"the C++ compiler {cxx} did not run ({_first_line(err)})") from err
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise CompileUnavailable(
                f"the C++ compiler {cxx} failed on a one-line file (exit {done.returncode}"
                + (f": {detail[0]}" if detail else "")
                + ")"
            )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build(
    key: StepKey, step: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]], example: list[torch.Tensor]
) -> None:
    """Compile `key`'s library to disk unless it is there; the build process's work.

    `step(flat) -> dict` is the step on a flat list of tensors whose first dimension is the
    engines; `example` are such inputs for any engine count (only their shapes past the engine
    dimension and their dtypes matter). Raises `CompileUnavailable`, remembered on disk, when this
    machine cannot compile.
    """
    path = library_path(key)
    with _exclusive(path.with_suffix(".lock")):
        if path.exists():  # another process built it while this one waited for the lock
            return
        for leftover in path.parent.glob(f"{path.stem}.partial-*"):  # of a build killed midway
            leftover.unlink(missing_ok=True)
        try:
            check_compiler()
        except CompileUnavailable as err:
            _remember(_no_compiler_path(), str(err))
            raise
        try:
            _compile(key, step, example, path)
        except Exception as err:
            reason = f"{type(err).__name__}: {_first_line(err)}"
            _remember(_failure_path(key), reason)
            raise CompileUnavailable(reason) from err


def _compile(key: StepKey, step: Callable, example: list[torch.Tensor], path: Path) -> None:
    """Export `step`, compile it with AOTInductor, and rename the package into `path` (atomic)."""
    start = time.perf_counter()
    dynamic = None
    if key.num_envs is None:
        example = [t.new_zeros((DYNAMIC_TRACE_ENVS, *t.shape[1:])) for t in example]
        engines = torch.export.Dim("N", min=1)
        dynamic = ([{0: engines} for _ in example],)
    names: list[str] = []  # of the outputs, known once traced (a local: export restores module attributes)

    def traced(flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = step(flat)
        names[:] = list(out)
        return tuple(out.values())

    with warnings.catch_warnings():  # torch's own deprecation notices from inside export
        warnings.simplefilter("ignore")
        program = torch.export.export(_FlatStep(traced), (example,), dynamic_shapes=dynamic)
        partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.pt2")
        options = _INDUCTOR_OPTIONS | {"aot_inductor.metadata": {"names": ",".join(names)}}
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(partial), inductor_configs=options)
            os.replace(partial, path)  # atomic: a concurrent process sees no file or a whole one
        finally:
            partial.unlink(missing_ok=True)
    stats.compiled += 1
    log.info("torch_student_env: compiled %s in %.1f s", path.name, time.perf_counter() - start)


class _FlatStep(torch.nn.Module):
    """`torch.export` takes modules: the step on a flat list of tensors, returning a tuple."""

    def __init__(self, step: Callable[[list[torch.Tensor]], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.step = step

    def forward(self, flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.step(flat)


# -- building (from the user's process) -----------------------------------------------------------
class Build:
    """A build process for one library: started once per configuration and process, polled without
    blocking (`poll`) or waited for (`wait`)."""

    def __init__(self, key: StepKey, spec: dict) -> None:
        self.key = key
        self.path = library_path(key)
        self.log_path = self.path.with_suffix(".log")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Detached (its own session): a script that ends before the build still leaves the library
        # for its next run, and a Ctrl-C meant for the script does not kill the build.
        detach = (
            {"start_new_session": True} if os.name != "nt" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
        )
        # The child imports this very copy of the package (a checkout on sys.path, not installed,
        # included): it must rebuild the step from the code this process runs.
        here = str(Path(__file__).resolve().parents[1])
        environ = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH")))))
        with open(self.log_path, "wb") as out:  # torch's warnings and inductor's chatter go here
            self.process = subprocess.Popen(
                [sys.executable, "-m", "torch_student_env.build", "--spec", "-"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                **detach,
            )
        try:
            self.process.stdin.write(json.dumps(spec).encode())
            self.process.stdin.close()
        except OSError:  # the child died before reading it (BrokenPipeError): its exit code says so
            pass
        self.started = time.monotonic()
        stats.started += 1

    def poll(self) -> str | None:
        """None while building; "ready" once the library is on disk; otherwise why it failed."""
        with _builds_lock:
            code = self.process.poll()
        return None if code is None else self._outcome(code)

    def wait(self, timeout: float | None = None) -> str | None:
        """Block until the build ends (or `timeout` seconds pass: None); its outcome as `poll`'s."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self._outcome(code)

    def _outcome(self, code: int) -> str:
        if code == 0 and self.path.exists():
            return "ready"
        reason = remembered_failure(self.key) if code == UNAVAILABLE_EXIT_CODE else None
        return reason or f"the build process exited with code {code} (its output: {self.log_path})"


def start_build(key: StepKey, spec: dict) -> Build:
    """The build of `key` in a child process, started now unless this process started it already.

    `spec` is the JSON-able description the build process rebuilds the step from
    (`fast_path.build_from_spec`).
    """
    with _builds_lock:
        running = _builds.get(key)
        if running is not None and running.process.poll() in (None, 0):  # building, or built
            return running
        running = _builds[key] = Build(key, spec)  # none yet, or a retry of one that failed
    engines = f"{key.num_envs:,} engines" if key.num_envs is not None else f"1-{STATIC_MIN_ENVS - 1} engines"
    log.info(
        "torch_student_env: building the compiled step for step_size=%d, history=%d, %s in the background "
        "(its output: %s); stepping eagerly until it is ready",
        key.step_size,
        key.history,
        engines,
        running.log_path,
    )
    return running


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

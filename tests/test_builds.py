"""Building compiled steps: shared by processes that need one at once, safe to kill midway, never
trusted when corrupt, refused once and remembered where there is no working C++ compiler.

The export and C++ steps are replaced by a stand-in where the test is about the bookkeeping around
them (tests/test_fast_path.py builds real libraries)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from torch_student_env import compiled, fast_path, make_env
from torch_student_env.config import FAST_ENV_VAR, WAIT_COMPILED_ENV_VAR
from torch_student_env.sim.variants import resolve

KEY = compiled.StepKey(10, 7, True, True, None, "cpu", "a test key")

# Builds KEY with a stand-in compiler that records each call in argv[1], leaves a partial file
# (as a real build does while it runs), says "building" and waits for a line on stdin to finish.
DRIVER = textwrap.dedent(
    """
    import os, sys
    from torch_student_env import compiled

    def stand_in(key, step, example, path):
        with open(sys.argv[1], "a") as calls:
            calls.write(f"{os.getpid()}\\n")
        partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.pt2")
        partial.write_bytes(b"half a library")
        print("building", flush=True)
        sys.stdin.readline()
        os.replace(partial, path)

    compiled._compile = stand_in
    compiled.check_compiler = lambda: None
    compiled.build(compiled.StepKey(10, 7, True, True, None, "cpu", "a test key"), None, [])
    print("done", flush=True)
    """
)


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache of compiled steps, and no library or build of this process in memory."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(compiled.CACHE_ENV_VAR, str(folder))
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled, "_builds", {})
    monkeypatch.setattr(fast_path, "_warned", set())
    return folder


def _driver(calls: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(calls)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # real processes
def test_two_processes_that_need_one_library_build_it_once(cache, tmp_path):
    calls = tmp_path / "calls"
    first = _driver(calls)
    assert first.stdout.readline().strip() == "building"  # it holds the lock now
    second = _driver(calls)  # waits for the lock, then finds the library
    first.stdin.write("\n")
    first.stdin.flush()
    for process in (first, second):
        out, _ = process.communicate(input="\n", timeout=120)
        assert process.returncode == 0 and out.strip().endswith("done")
    assert len(calls.read_text().split()) == 1
    assert compiled.library_path(KEY).read_bytes() == b"half a library"
    assert not list(cache.glob("*.partial-*"))


@pytest.mark.slow  # real processes
def test_a_build_killed_midway_leaves_nothing_to_load_and_the_next_one_finishes(cache, tmp_path, monkeypatch):
    first = _driver(tmp_path / "calls")
    assert first.stdout.readline().strip() == "building"
    first.send_signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
    first.wait(timeout=60)
    path = compiled.library_path(KEY)
    assert not path.exists() and list(cache.glob("*.partial-*"))  # only the leftover, under another name
    assert compiled.load(KEY) is None

    def stand_in(key, step, example, path):
        path.write_bytes(b"whole")

    monkeypatch.setattr(compiled, "_compile", stand_in)
    monkeypatch.setattr(compiled, "check_compiler", lambda: None)
    compiled.build(KEY, None, [])  # the dead holder's lock is free; its leftover is removed
    assert path.read_bytes() == b"whole" and not list(cache.glob("*.partial-*"))


def test_a_corrupt_library_is_removed_and_built_again(cache, monkeypatch):
    path = compiled.library_path(KEY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a library")
    assert compiled.load(KEY) is None and not path.exists()
    built = []
    monkeypatch.setattr(compiled, "_compile", lambda key, step, example, path: built.append(path))
    monkeypatch.setattr(compiled, "check_compiler", lambda: None)
    compiled.build(KEY, None, [])
    assert built == [path]


def test_a_failed_build_is_remembered_until_the_code_or_torch_changes(cache, monkeypatch):
    def export_fails(key, step, example, path):
        raise RuntimeError("inductor cannot lower this (simulated)\nmore detail")

    monkeypatch.setattr(compiled, "_compile", export_fails)
    monkeypatch.setattr(compiled, "check_compiler", lambda: None)
    with pytest.raises(compiled.CompileUnavailable, match="RuntimeError: inductor cannot lower this"):
        compiled.build(KEY, None, [])
    assert compiled.remembered_failure(KEY) == "RuntimeError: inductor cannot lower this (simulated)"
    other = compiled.StepKey(10, 8, True, True, None, "cpu", "a test key")
    assert compiled.remembered_failure(other) is None  # another configuration may still build
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert compiled.remembered_failure(KEY) is None  # another torch tries again


def _fake_compiler(tmp_path: Path) -> Path:
    """A C++ compiler that tells its version and fails on every file (as a broken install does)."""
    script = tmp_path / "broken-g++"
    script.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "g++ 12 (stand-in)"; exit 0; fi\n'
                      'echo "broken-g++: fatal error: cannot execute cc1plus" >&2\nexit 1\n')  # fmt: skip
    script.chmod(0o755)
    return script


@pytest.mark.slow  # a build process, then a second Python process
@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the compiler")
def test_without_a_working_compiler_the_env_steps_eagerly_warns_once_and_never_tries_again(
    cache, tmp_path, monkeypatch
):
    """The build process tries the compiler on a one-line file before exporting anything, fails,
    and says why on disk; the env warns once and plays the eager episodes; a second process warns at
    its first reset and starts no build."""
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path)))
    monkeypatch.delenv(WAIT_COMPILED_ENV_VAR, raising=False)
    started = compiled.stats.started
    eager = make_env(num_envs=6, seed=3, fast=False, history=7)
    fast = make_env(num_envs=6, seed=3, fast=True, history=7)
    eager.reset(), fast.reset()
    assert fast.step_kind == "building" and compiled.stats.started == started + 1
    with pytest.warns(RuntimeWarning, match="could not compile the env step .*broken-g\\+\\+ failed") as caught:
        assert fast.wait_compiled() == "unavailable"
        for _ in range(3):
            actions = torch.tensor([0, 1, 2, 0, 1, 0])
            a, b = eager.step(actions), fast.step(actions)
            assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["reward"], b["reward"])
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert list(cache.glob("no-compiler-*.txt")) and not list(cache.glob("*.pt2"))
    # another env of this process: no second warning, no second build
    again = make_env(num_envs=2, seed=3, fast=True, history=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.reset()
        again.step(torch.zeros(2, dtype=torch.int64))
    assert again.step_kind == "unavailable" and compiled.stats.started == started + 1
    # a new process remembers: one warning at its first reset, and no build process
    code = (
        "import torch; from torch_student_env import make_env, compiled\n"
        "env = make_env(num_envs=4, fast=True); env.reset(); env.step(torch.zeros(4, dtype=torch.int64))\n"
        "print(env.step_kind, compiled.stats.started)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in (FAST_ENV_VAR, WAIT_COMPILED_ENV_VAR)}
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["unavailable", "0"]
    assert done.stderr.count("RuntimeWarning") == 1 and "broken-g++ failed" in done.stderr
    assert "deprecated" not in done.stderr  # none of torch's own warnings from a build


def test_a_build_spec_names_the_library_of_its_configuration(monkeypatch):
    """What an env hands its build process describes the same configuration, variants included:
    the build process checks it rebuilt the library it was asked for."""
    env = make_env(num_envs=300, step_size=7, history=12, fast=True, sim_variants="plausible", max_steps_per_episode=90)
    step = env._step
    spec = fast_path.build_spec(step.key, env.backend)
    assert spec["num_envs"] == 300 and spec["history"] == 12 and len(spec["models"]) == len(resolve("plausible"))
    assert spec["library"] == compiled.library_path(step.key).name
    built = []
    monkeypatch.setattr(compiled, "build", lambda key, flat_step, example: built.append((key, len(example))))
    fast_path.build_from_spec(json.loads(json.dumps(spec)))  # as the build process reads it
    assert built[0][0] == step.key and built[0][1] > 2
    with pytest.raises(ValueError, match="the spec describes"):
        fast_path.build_from_spec(spec | {"max_steps_per_episode": 91})


def test_the_build_command_covers_the_main_job_compat_and_the_server(monkeypatch, capsys):
    """`python -m torch_student_env.build` builds what people use: each configuration below is
    made the way its user makes it, and its library is one the command builds."""
    from torch_student_env.build import COMMON, _env_options, main
    from torch_student_env.compat import StudentGymEnv, StudentGymEnvVectorized
    from torch_student_env.server.groups import new_group
    from torch_student_env.sim.params import SimParams

    monkeypatch.delenv(FAST_ENV_VAR, raising=False)
    built = {make_env(seed=0, **_env_options(options))._step.key for options in COMMON.values()}
    ppo = sys.modules.get("ppo_cnn_example")
    if ppo is None:
        import importlib.util

        monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
        spec = importlib.util.spec_from_file_location(
            "ppo_cnn_example", Path(__file__).parents[1] / "examples" / "ppo_cnn.py"
        )
        ppo = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = ppo
        spec.loader.exec_module(ppo)
    args = ppo.with_recipe(ppo.Args())
    main_job = make_env(num_envs=args.num_envs, step_size=args.step_size, history=args.history)
    users = {
        "the main job": main_job,
        "make_env(4)": make_env(4),
        "make_env(64)": make_env(64),
        "compat's vectorized env": StudentGymEnvVectorized(num_envs=4)._env,
        "compat's single engine": StudentGymEnv()._vec._env,
        "a server group": new_group(4, 1000, True, True, SimParams()).env,
    }
    for name, env in users.items():
        assert env.config.fast and env._step.key in built, name
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(COMMON) and all(line.split()[0] in ("built", "not") for line in listed)


def test_a_cache_that_cannot_be_written_leaves_the_env_eager_after_one_warning(monkeypatch, tmp_path):
    """No build can start where the cache folder cannot be made (here a file stands in its way):
    the env warns once, saying where, and plays the eager episodes; nothing raises."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(compiled.CACHE_ENV_VAR, str(blocker / "cache"))
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled, "_builds", {})
    monkeypatch.setattr(fast_path, "_warned", set())
    monkeypatch.delenv(WAIT_COMPILED_ENV_VAR, raising=False)
    eager = make_env(num_envs=3, seed=1, fast=False, history=7)
    fast = make_env(num_envs=3, seed=1, fast=True, history=7)
    eager.reset()
    with pytest.warns(RuntimeWarning, match="cannot start a build in .*not-a-folder"):
        fast.reset()
    assert fast.step_kind == "unavailable"
    actions = torch.tensor([0, 1, 2])
    a, b = eager.step(actions), fast.step(actions)
    assert torch.equal(a["observation"], b["observation"]) and torch.equal(a["reward"], b["reward"])


def test_a_build_process_imports_the_package_its_env_runs(cache, monkeypatch):
    """The child is pointed at this copy of the package (first on its PYTHONPATH), so that a
    checkout that is on sys.path but not installed builds from the code it runs; it reads its spec
    from standard input, detached from the caller's session."""
    started = {}

    class Recorder:
        def __init__(self, command, **options):
            started.update(command=command, **options)
            self.stdin = open(os.devnull, "wb")

        def poll(self):
            return None

    monkeypatch.setattr(compiled.subprocess, "Popen", Recorder)
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    compiled.start_build(KEY, {"spec": "for the test"})
    package_parent = str(Path(compiled.__file__).resolve().parents[1])
    assert started["env"]["PYTHONPATH"].split(os.pathsep) == [package_parent, "elsewhere"]
    assert started["command"][1:] == ["-m", "torch_student_env.build", "--spec", "-"]
    assert started["stdin"] is subprocess.PIPE and (started.get("start_new_session") or os.name == "nt")


@pytest.mark.slow  # a build process
@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for the compiler")
def test_the_build_command_waits_for_each_build_and_says_how_it_ended(cache, tmp_path, monkeypatch, capsys):
    """`python -m torch_student_env.build` waits for every build it starts: here the compiler is
    broken, so the one configuration ends "unavailable" (not "building") and the command fails."""
    from torch_student_env import build

    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path)))
    monkeypatch.setattr(build, "COMMON", {"a small env": {"num_envs": 2, "history": 7}})
    assert build.main([]) == 1
    assert capsys.readouterr().out.startswith("a small env: unavailable")

"""How long a newcomer waits, in fresh processes with empty compile caches: the targets of "No one
waits for a compile" (issue 39), each measured as a newcomer meets it.

    python scripts/cold_start.py            # everything (about 4 minutes on 2 cores)
    python scripts/cold_start.py --quick    # without the 150 s loop

- first use: import, make_env(4), reset, one step; seconds beyond `import torch`;
- compat: the seed client's vectorized env (4 engines, reset, 30 steps) and single engine (reset,
  30 steps) in one process, beyond `import torch`;
- the seed client's example scripts with only the import line changed (../shared/seed);
- the reference server: launch to open port, then a new token's create + reset + step;
- a loop stepping make_env(4) for 150 s: median step over its last 10 s against its first 100;
- no C++ compiler (a stand-in that fails): first process and a second one.

Each case gets its own empty cache, and build processes left running by one case are ended before
the next, so that no case inherits another's library or shares the cores with its build.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "seed" / "student_client_1.0.1"
UNSET = ("TORCH_STUDENT_ENV_CACHE_DIR", "TORCH_STUDENT_ENV_FAST", "TORCH_STUDENT_ENV_WAIT_COMPILED")

FIRST_USE = """
import time; start = time.perf_counter()
import torch; imported = time.perf_counter()
from torch_student_env import make_env
env = make_env(num_envs=4, seed=0); env.reset(); env.step(torch.zeros(4, dtype=torch.int64))
print(json.dumps({"import torch": imported - start, "beyond import torch": time.perf_counter() - imported,
                  "step_kind": env.step_kind}))
"""
COMPAT = """
import time; start = time.perf_counter()
import torch; imported = time.perf_counter()
from torch_student_env.compat import StudentGymEnv, StudentGymEnvVectorized
vec = StudentGymEnvVectorized(num_envs=4); vec.reset()
for _ in range(30): vec.step([0, 0, 0, 0])
single = StudentGymEnv(); single.reset()
for _ in range(30): single.step(0)
print(json.dumps({"import torch": imported - start, "beyond import torch": time.perf_counter() - imported}))
"""
LOOP = """
import statistics, time
import torch
from torch_student_env import make_env
env = make_env(num_envs=4, seed=0); env.reset()
actions, times, start = torch.zeros(4, dtype=torch.int64), [], time.perf_counter()
while time.perf_counter() - start < SECONDS:
    t = time.perf_counter(); env.step(actions); now = time.perf_counter()
    times.append((now - start, now - t))
first = statistics.median(d for _, d in times[:100])
last = statistics.median(d for t, d in times if t >= SECONDS - 10)
print(json.dumps({"first 100 steps, median ms": first * 1e3, "last 10 s, median ms": last * 1e3,
                  "ratio": last / first, "steps": len(times), "step_kind": env.step_kind}))
"""
NO_COMPILER = """
import time, warnings; start = time.perf_counter()
import torch; imported = time.perf_counter()
from torch_student_env import compiled, make_env
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    env = make_env(num_envs=4, seed=0); env.reset(); env.step(torch.zeros(4, dtype=torch.int64))
    first = time.perf_counter() - imported
    env.wait_compiled()
print(json.dumps({"beyond import torch": first, "step_kind": env.step_kind, "builds started": compiled.stats.started,
                  "warnings": len(caught)}))
"""


def end_builds() -> None:
    """End the build processes that earlier cases left running (they are detached by design)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"torch_student_env.build" in command and b"--spec" in command:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


def fresh(cache: str, **extra: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in UNSET} | extra
    environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    return environ


def run(code: str, cache: str, timeout: float = 600, **extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", "import json\n" + textwrap.dedent(code)], env=fresh(cache, **extra),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def seed_script(name: str, cache: str) -> dict:
    """One of the seed client's example scripts, its import line pointed at compat; wall seconds."""
    source = (SEED / name).read_text().splitlines()
    line = next(i for i, text in enumerate(source) if text.startswith("from student_client"))
    source[line] = "from torch_student_env.compat import " + source[line].split(" import ")[1]
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "\n".join(source)], cwd=cwd, capture_output=True, text=True,
                              env=fresh(cache, MPLBACKEND="Agg"), timeout=600)  # fmt: skip
    return {"wall seconds": time.perf_counter() - start, "exit code": done.returncode}


def server_first_request(cache: str) -> dict:
    """Launch to open port, then a new token's create + reset + step (the remote backend)."""
    sys.path.insert(0, str(ROOT))
    import torch

    from torch_student_env import make_env
    from torch_student_env.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "torch_student_env.server", "--port", str(port), "--db", ":memory:"]
    start = time.perf_counter()
    server = subprocess.Popen(command, env=fresh(cache, STUDENT_ENV_TOKENS="cold-token"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - start > 300:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.05)  # polling the start; the time is read from the clock
        opened = time.perf_counter() - start
        t = time.perf_counter()
        env = make_env(num_envs=4, backend="remote", server_url=f"http://127.0.0.1:{port}", user_token="cold-token")
        env.reset()
        env.step(torch.zeros(4, dtype=torch.int64))
        first = time.perf_counter() - t
        env.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"launch to open port, s": opened, "first create + reset + step, s": first}


def no_compiler(cache: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cxx = Path(tmp) / "broken-g++"
        cxx.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo stand-in && exit 0\nexit 1\n')
        cxx.chmod(0o755)
        return {
            "first process": run(NO_COMPILER, cache, CXX=str(cxx)),
            "second process": run(NO_COMPILER, cache, CXX=str(cxx)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the 150 s loop")
    parser.add_argument("--loop-seconds", type=float, default=150.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cases = {
        "first use": lambda c: run(FIRST_USE, c),
        "compat, vectorized + single engine, 30 steps each": lambda c: run(COMPAT, c),
        "no C++ compiler": no_compiler,
        "reference server": server_first_request,
    }
    if SEED.is_dir():
        for name in ("vectorized_example.py", "single_trajectory.py"):
            cases[f"seed script {name}"] = lambda c, name=name: seed_script(name, c)
    if not args.quick:
        cases[f"make_env(4) stepped for {args.loop_seconds:.0f} s"] = lambda c: run(
            f"SECONDS = {args.loop_seconds}\n" + LOOP, c
        )
    results = {}
    for name, case in cases.items():
        with tempfile.TemporaryDirectory() as cache:
            results[name] = case(cache)
            end_builds()
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

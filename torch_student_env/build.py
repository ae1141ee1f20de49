"""Build compiled steps ahead of time, for courses and CI images that want warm caches.

    python -m torch_student_env.build            # the configurations people use (COMMON)
    python -m torch_student_env.build --list     # what those are, and which are built already

Nothing needs it: an env builds its own library in the background the first time it meets a
configuration, stepping eagerly meanwhile (`fast_path.CompiledStep`). This runs the same builds
now, one after another, and waits for them. `--spec -` is the build process an env starts: it
reads one `fast_path.build_spec` from its standard input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

# The make_env options of the configurations people use. Engine counts below
# compiled.STATIC_MIN_ENVS share one library, so "4 and 64 engines" is one build, and so do the
# seed client's envs (compat) and the reference server's groups with the client's default
# auto-reset: the client's view of an env (`client_view.client_env_options`) is one configuration.
COMMON: dict[str, dict[str, Any]] = {
    # the main job trains on 128 engines' 10-row windows: make_env's own configuration
    "make_env() below 256 engines (4, 64, ...), and the main job (examples/ppo_cnn.py)": {"num_envs": 4},
    "compat (the seed client's envs) and the reference server's groups": {"client": True, "num_envs": 4},
}
_MAX_SPEC_BYTES = 1 << 20  # a spec is a few kB: bounded before parsing


def _env_options(options: dict[str, Any]) -> dict[str, Any]:
    """`make_env` options of one COMMON entry: the client's view through `client_view`, which owns it."""
    options = dict(options)
    if options.pop("client", False):
        from torch_student_env.client_view import client_env_options
        from torch_student_env.server.config import CLIENT_STEPS_PER_EPISODE

        options |= client_env_options(True, hidden_state=False, max_steps_per_episode=CLIENT_STEPS_PER_EPISODE)
    return options


def build_common(names: list[str] | None = None) -> dict[str, str]:
    """Build (or find) the libraries of `COMMON` (or the entries named); each entry's status."""
    from torch_student_env import make_env

    done = {}
    for name, options in COMMON.items():
        if names and name not in names:
            continue
        start = time.perf_counter()
        env = make_env(seed=0, fast=True, **_env_options(options))
        env.reset()  # loads the library, or starts its build
        done[name] = env.wait_compiled()
        print(f"{name}: {env.step_kind} ({time.perf_counter() - start:.1f} s)", flush=True)
    return done


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring); the exit code."""
    parser = argparse.ArgumentParser(prog="python -m torch_student_env.build", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the configurations and whether each is built")
    parser.add_argument("--spec", help="build one library from a JSON spec ('-': standard input); for envs")
    args = parser.parse_args(argv)
    if args.spec is not None:
        return _build_one(sys.stdin.buffer.read(_MAX_SPEC_BYTES + 1) if args.spec == "-" else args.spec.encode())
    if args.list:
        from torch_student_env import compiled, make_env

        for name, options in COMMON.items():
            env = make_env(seed=0, fast=True, **_env_options(options))
            built = compiled.library_path(env._step.key).exists()
            print(f"{'built' if built else 'not built':>9}  {name}")
        return 0
    statuses = build_common()
    return 0 if all(s == "compiled" for s in statuses.values()) else 1


def _build_one(raw: bytes) -> int:
    import os

    from torch_student_env import compiled
    from torch_student_env.fast_path import build_from_spec

    if len(raw) > _MAX_SPEC_BYTES:
        print(f"the spec is over {_MAX_SPEC_BYTES} bytes", file=sys.stderr)
        return 2
    if hasattr(os, "nice"):
        os.nice(10)  # the user's own loop comes first on a small machine
    try:
        build_from_spec(json.loads(raw))
    except compiled.CompileUnavailable as err:
        print(f"cannot compile here: {err}", file=sys.stderr)
        return compiled.UNAVAILABLE_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())

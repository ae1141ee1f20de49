"""Can one compiled library serve several window lengths? (issue 39, item 5)

The configurations people use differ in `history` (the default 10, the client's view 50, the main
job's 100), and each is a library of its own today. This exports the same step with the window
length W a symbol and times it against the
libraries compiled for one W, at 4 and 64 engines, in one run:

    python scripts/history_library.py            # builds 3 libraries in a temporary folder

Prints one table: ms per step (median of 5 blocks) for each library and W, and each build's time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from torch_student_env import compiled, make_env
from torch_student_env.eager import below_autograd
from torch_student_env.episode import pure_step

# The client's view and the main job's. Export guards W != K and W != K + 1 (at W = K the shift
# keeps no old row), so a symbolic window serves W >= K + 2: not the default W = K = 10.
WINDOWS = (50, 100)
ENGINES = (4, 64)
STEP = 10


def _flat_step(env):
    """The env's step on a flat list of tensors (as `fast_path.build_from_spec` makes it) and an example."""
    backend, buffers = env.backend, env._buffers
    sim_like, kernel, constants = backend.sim, backend.kernel, backend.kernel_constants()

    def flat_step(flat):
        sim, start = compiled.unflatten(sim_like, flat)
        state, start = compiled.unflatten(buffers, flat, start)
        sim, state, out = pure_step(kernel, None, constants, sim, state, flat[start], flat[start + 1], STEP, True, True)
        return (*compiled.flatten(sim), *compiled.flatten(state), *out.values())

    example = [t.contiguous() for t in (*compiled.flatten(sim_like), *compiled.flatten(buffers))]
    actions = torch.zeros(env.num_envs, dtype=torch.int64)
    return flat_step, [*example, actions, actions >= 0], len(compiled.flatten(sim_like))


class _Module(torch.nn.Module):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def forward(self, flat):
        return self.step(flat)


def build(history: int, symbolic_window: bool, folder: Path):
    """A library of the default configuration at `history`; W symbolic when asked. (runner, seconds)."""
    env = make_env(num_envs=4, step_size=STEP, history=history, seed=0, fast=False)
    env.reset()
    step, example, n_sim = _flat_step(env)
    engines = torch.export.Dim("N", min=1)
    window = torch.export.Dim("W", min=STEP + 2, max=4096)  # export guards W != K and W != K + 1
    dims = []
    for i, t in enumerate(example):
        dim = {0: engines}
        if symbolic_window and i >= n_sim and t.dim() >= 2 and t.shape[1] == history:  # the window buffers
            dim[1] = window
        dims.append(dim)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(_Module(step), (example,), dynamic_shapes=(dims,))
        path = folder / f"w{history}{'-symbolic' if symbolic_window else ''}.pt2"
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs=compiled._INDUCTOR_OPTIONS
        )
    seconds = time.perf_counter() - start
    return torch._inductor.aoti_load_package(str(path), run_single_threaded=True).loader.run, seconds


def time_library(run, history: int, n: int) -> float:
    """ms per step of `run` on an env of `n` engines and window `history` (its state threaded through)."""
    env = make_env(num_envs=n, step_size=STEP, history=history, seed=0, fast=False)
    env.reset()
    state = [t.contiguous() for t in (*compiled.flatten(env.backend.sim), *compiled.flatten(env._buffers))]
    actions = torch.zeros(n, dtype=torch.int64)
    mask = actions >= 0
    blocks = []
    for _ in range(6):
        start = time.perf_counter()
        for _ in range(200):
            out = run([*state, actions, mask])
            state = [t.contiguous() for t in out[: len(state)]]
        blocks.append((time.perf_counter() - start) / 200 * 1e3)
    return statistics.median(blocks[1:])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, below_autograd():
        folder = Path(tmp)
        libraries = {}
        for history in WINDOWS:
            libraries[f"W={history} only"] = {history: build(history, False, folder)}
        run, seconds = build(WINDOWS[0], True, folder)
        libraries["W symbolic (one library)"] = {h: (run, seconds) for h in WINDOWS}
        print("| library | build s | " + " | ".join(f"W={h}, N={n}" for h in WINDOWS for n in ENGINES) + " |")
        print("|---|---:|" + "---:|" * (len(WINDOWS) * len(ENGINES)))
        for name, by_window in libraries.items():
            cells = []
            for h in WINDOWS:
                for n in ENGINES:
                    cells.append(f"{time_library(by_window[h][0], h, n):.3f}" if h in by_window else "-")
            build_s = next(iter(by_window.values()))[1]
            print(f"| {name} | {build_s:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

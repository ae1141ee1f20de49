"""Time `env.step` of the embedded simulator: one line, steps/s and flight-rows/s.

    python scripts/time_step.py --num-envs 65536 --device cpu

The full comparison table (other implementations, memory floor) is `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import time

import torch

from torch_student_env import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-envs", type=int, default=65536)
    parser.add_argument("--step-size", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after 3 warm-up steps")
    parser.add_argument("--fast", choices=["auto", "on", "off"], default="auto", help="compiled fast path")
    args = parser.parse_args()

    fast = {"auto": None, "on": True, "off": False}[args.fast]
    env = make_env(num_envs=args.num_envs, step_size=args.step_size, device=args.device, seed=0, fast=fast)
    actions = torch.zeros(args.num_envs, dtype=torch.int64, device=env.device)
    env.reset()
    for _ in range(3):
        env.step(actions)
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        env.step(actions)
    sync()
    per_step = (time.perf_counter() - start) / args.steps
    rows = args.num_envs * args.step_size / per_step
    print(
        f"make_env(num_envs={args.num_envs}, step_size={args.step_size}, device={args.device}): "
        f"{1 / per_step:,.1f} steps/s, {args.num_envs / per_step / 1e6:,.2f} M env-steps/s, fast={env.config.fast}, "
        f"{rows / 1e6:,.1f} M flight-rows/s ({per_step * 1e3:.2f} ms/step, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)"
    )


if __name__ == "__main__":
    main()

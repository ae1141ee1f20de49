"""Where the main job's time goes, at its own settings, in one run (issue 40).

    python scripts/train_bench.py                     # the main job's defaults (examples/ppo_cnn.py)
    python scripts/train_bench.py --updates 8 --run runs/<a finished main job>
    python scripts/train_bench.py --variant history=100 --variant num_minibatches=4   # against the defaults

Each figure is env steps per second (one step of one engine) of one part of a PPO update, timed
over `--updates` updates after one warm-up update, with the same env, network and rollout the
main job builds (`ppo_cnn.make_train_env`, `make_agent`, `new_rollout`, `collect`,
`advantages_and_returns`, `optimise`):
- the env alone: `env.step` with the policy's own actions replayed, no network;
- collection: a rollout, env and policy (`collect`);
- the update: advantages and PPO's epochs (`advantages_and_returns` + `optimise`);
- end to end: collection then update, as the main job's loop runs them;
- the env's share of end to end (its `env.step` calls, timed inside the collection).
With `--run`, also the wall time a finished main job took for its validation curve to come within
30 of `belief` (paired), from its eval.json: env steps at that point / its training steps per second.
The compiled step is loaded (or built, and waited for) before anything is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _ppo_module():
    """examples/ppo_cnn.py as a module, its helpers importable beside it as when run as a script."""
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("ppo_cnn_example", ROOT / "examples" / "ppo_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def measure(updates: int, overrides: dict) -> dict[str, float]:
    """Env steps per second of each part, over `updates` updates after one warm-up update."""
    ppo = _ppo_module()
    args = dataclasses.replace(ppo.with_recipe(ppo.Args()), **overrides)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    env = ppo.make_train_env(args, device)
    td = env.reset()
    agent = ppo.make_agent(args, env, device)
    optimizer = ppo.make_optimizer(args, agent)
    rollout, td = ppo.new_rollout(td, agent, args.num_steps)
    collector = ppo.Collector(env, agent, None, 1, returns=torch.zeros(2, device=device))
    next_done = torch.zeros(args.num_envs, device=device)
    batch = args.num_envs * args.num_steps
    seconds = {"collection": [], "update": [], "env inside collection": []}
    for update in range(updates + 1):  # the first one warms up (and waits for the compiled step)
        env_before = collector.rest + (collector.first or 0.0)
        start = time.perf_counter()
        td, next_done = ppo.collect(args, collector, rollout, td, next_done, 0.0, None)
        collected = time.perf_counter()
        advantages, returns = ppo.advantages_and_returns(args, agent, rollout, td, next_done)
        ppo.optimise(args, agent, agent, optimizer, rollout, advantages, returns, 0.0)
        done = time.perf_counter()
        if update:
            seconds["collection"].append(collected - start)
            seconds["update"].append(done - collected)
            seconds["env inside collection"].append(collector.rest + (collector.first or 0.0) - env_before)
    actions = rollout.actions.clone()  # the policy's own actions, replayed on the env alone
    env_alone = []
    for _ in range(updates):
        start = time.perf_counter()
        for step in range(args.num_steps):
            env.step(actions[step])
        env_alone.append(time.perf_counter() - start)
    per = {name: statistics.median(values) for name, values in seconds.items()}
    end_to_end = per["collection"] + per["update"]
    return {
        "env alone": batch / statistics.median(env_alone),
        "collection (env + policy)": batch / per["collection"],
        "update (advantages + PPO epochs)": batch / per["update"],
        "end to end": batch / end_to_end,
        "env share of end to end": per["env inside collection"] / end_to_end,
        "step kind": env.step_kind,
        "settings": {
            k: getattr(args, k) for k in ("num_envs", "num_steps", "history", "num_minibatches", "update_epochs")
        },
    }


def time_to_belief(run: Path, margin: float = 30.0) -> dict[str, float] | None:
    """A finished run's first validation point within `margin` of belief (paired), and the training
    wall time to reach it at the run's mean training speed; None if it never came that close."""
    data = json.loads((run / "eval.json").read_text())
    extra = data.get("extra", data)
    curve = data.get("curve") or extra.get("curve") or []
    steps_per_s = extra["env_steps"] / extra["train_seconds"]
    for point in curve:
        if point.get("paired_diff", float("-inf")) >= -margin:
            return {"env_steps": point["env_steps"], "train_seconds": point["env_steps"] / steps_per_s}
    return None


def _variant(text: str, defaults) -> dict:
    """`key=value,key=value` -> Args overrides, each value parsed as its default's type."""
    overrides = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not hasattr(defaults, key):
            raise SystemExit(f"--variant: no flag {key!r} in examples/ppo_cnn.py")
        kind = type(getattr(defaults, key))
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=6, help="timed updates (after one warm-up update)")
    parser.add_argument("--num-envs", type=int, help="override the main job's engines")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also measure these flags of ppo_cnn.py, e.g. 'history=100' (repeatable; each after the defaults)",
    )
    parser.add_argument("--run", type=Path, help="a finished main job's folder: time to belief - 30")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    overrides = {"device": args.device} | ({"num_envs": args.num_envs} if args.num_envs else {})
    defaults = _ppo_module().Args()
    runs = {"defaults": overrides} | {v: overrides | _variant(v, defaults) for v in args.variant}
    all_figures = {name: measure(args.updates, o) for name, o in runs.items()}
    figures = all_figures["defaults"]
    if args.run is not None:
        figures["time to belief - 30"] = time_to_belief(args.run)
    print("| part | " + " | ".join(all_figures) + " |\n|---|" + "---:|" * len(all_figures))
    for name, value in figures.items():
        if isinstance(value, float) and "share" not in name:
            print(f"| {name} | " + " | ".join(f"{f[name]:,.0f}" for f in all_figures.values()) + " |")
    shares = " | ".join(f"{100 * f['env share of end to end']:.1f} %" for f in all_figures.values())
    print(f"| env share of end to end | {shares} |")
    for name, f in all_figures.items():
        print(f"{name}: step {f['step kind']}, settings {f['settings']}")
    if args.run is not None:
        print(f"time to belief - 30: {figures['time to belief - 30']}")
    if args.json:
        args.json.write_text(json.dumps(all_figures if args.variant else figures, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: env-steps/s and flight-rows/s of this env and of what a user would otherwise run.

    python scripts/bench.py                     # full table on this machine (a few minutes)
    python scripts/bench.py --sizes 4 64 1024   # fewer sizes
    python scripts/bench.py --device cuda       # adds 1,048,576 envs

Rows (step_size 10, uniform random actions, median of --repeats after warm-up): this env eager
and with its compiled fast path (the default on the CPU), eager again with a policy's action mix
below 8,192 envs; this model's floor (one compiled kernel drawing a step's random numbers and
writing the window outputs a step must write) and the memory-write floor; a naive NumPy env (a
Python loop over single engines of the same model, scripts/reference_gym_env.py) and gymnasium's
SyncVectorEnv over the same engines; the TorchRL adapter, and TorchRL's SerialEnv/ParallelEnv;
the remote backend against the reference server (a subprocess on 127.0.0.1) and the seed
client's request pattern; history=10 against history=100 at 4,096 engines. Also: adapter
overheads against the native env, memory per env, first use (import, make_env(4), reset, one
step) in fresh processes with cold and warm compile caches, and the ratios the targets name,
each between two rows of the same run. Writes JSON (--out). The server under many clients is
`scripts/soak.py`.

    python scripts/bench.py --sizes 65536 --native-only   # one line's worth: this env at one N
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import requests
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The fast envs timed here wait for their compiled step (built on a cold cache) instead of stepping
# eagerly while it builds: the tables time the compiled step. first_use runs without this.
os.environ.setdefault("TORCH_STUDENT_ENV_WAIT_COMPILED", "1")
from torch_student_env import make_env  # noqa: E402
from torch_student_env.config import FAST_PATH_MIN_ENVS  # noqa: E402
from torch_student_env.server import server_process  # noqa: E402

STEP = 10


def timed(step, repeats: int, min_seconds: float, warmup: int = 2, sync=lambda: None) -> float:
    """Median seconds per call over `repeats` timed blocks of >= `min_seconds` (after warm-up)."""
    for _ in range(warmup):
        step()
    sync()
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            step()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        samples.append(elapsed / calls)
    return statistics.median(samples)


# A policy's action mix (do nothing, repair, sell): trained and baseline policies mostly fly, so
# most of their steps have no repair and no episode end, which eager CPU steps skip (none_of).
POLICY_MIX = (0.90, 0.08, 0.02)


def actions_for(n: int, device, generator, mix: tuple[float, ...] | None = None) -> torch.Tensor:
    """n random actions: uniform (the benchmark's default), or drawn from `mix`."""
    if mix is None:
        return torch.randint(0, 3, (n,), generator=generator).to(device)
    return torch.multinomial(torch.tensor(mix), n, replacement=True, generator=generator).to(device)


def native(
    n: int, device: str, fast: bool | None, args, final_observation: bool = True, mix=None, history=None
) -> dict:
    start = time.perf_counter()
    env = make_env(
        num_envs=n, step_size=STEP, device=device, seed=0, fast=fast, validate_actions=False,
        final_observation=final_observation, history=history,
    )  # fmt: skip
    env.reset()
    gen = torch.Generator().manual_seed(0)
    pool = [actions_for(n, env.device, gen, mix) for _ in range(8)]
    i = iter(range(10**9))
    env.step(pool[0])
    setup = time.perf_counter() - start
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    per = timed(lambda: env.step(pool[next(i) % 8]), args.repeats, args.min_seconds, sync=sync)
    state = sum(v.numel() * v.element_size() for v in _tensors(env.state_dict()))
    return {"seconds_per_step": per, "setup_seconds": setup, "state_bytes_per_env": state / n}


def _tensors(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _tensors(v)
    elif isinstance(tree, torch.Tensor):
        yield tree


def sync_vector(n: int, args) -> dict:
    import gymnasium as gym
    from reference_gym_env import SingleEngineEnv

    env = gym.vector.SyncVectorEnv(
        [SingleEngineEnv for _ in range(n)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    per = timed(lambda: env.step(rng.integers(0, 3, n)), 1 if n >= 16384 else args.repeats, args.min_seconds, warmup=1)
    env.close()
    return {"seconds_per_step": per}


def torchrl_adapter(n: int, device: str, args) -> dict:

    from torch_student_env.adapters.torchrl import TorchRLStudentEnv

    env = TorchRLStudentEnv(num_envs=n, step_size=STEP, device=device, seed=0, validate_actions=False)
    td = env.reset()
    gen = torch.Generator().manual_seed(0)
    state = {"td": td}

    def step():
        td = state["td"]
        td["action"] = actions_for(n, env.device, gen)
        out, td = env.step_and_maybe_reset(td)
        state["td"] = td

    return {"seconds_per_step": timed(step, args.repeats, args.min_seconds)}


def torchrl_batched(n: int, parallel: bool, args) -> dict:
    from reference_gym_env import SingleEngineEnv
    from torchrl.envs import GymWrapper, ParallelEnv, SerialEnv

    def make():
        return GymWrapper(SingleEngineEnv())

    env = (ParallelEnv if parallel else SerialEnv)(n, make)
    td = env.reset()
    gen = torch.Generator().manual_seed(0)
    state = {"td": td}

    def step():
        td = state["td"]
        td["action"] = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=gen), 3)
        _, state["td"] = env.step_and_maybe_reset(td)

    per = timed(step, args.repeats, args.min_seconds)
    env.close()
    return {"seconds_per_step": per}


def remote(n: int, url: str, args) -> dict:
    env = make_env(num_envs=n, step_size=STEP, seed=0, backend="remote", server_url=url, user_token="bench")
    env.reset()
    gen = torch.Generator().manual_seed(0)
    per = timed(
        lambda: env.step(torch.multinomial(torch.tensor([0.9, 0.08, 0.02]), n, True, generator=gen)),
        args.repeats,
        args.min_seconds,
    )
    env.close()
    return {"seconds_per_step": per}


def seed_pattern(n: int, url: str, args) -> dict:
    """The seed client's loop: one POST per vectorized step, JSON lists to numpy, resets by hand."""
    http = requests.Session()
    http.headers["User-Token"] = "bench"
    api = url + "/api/v1"
    sid = http.post(api + "/session/create").json()["session_id"]
    ids = http.post(api + "/vectorized/episodes/create", headers={"Session-ID": sid}, json={"num_envs": n}).json()[
        "episode_ids"
    ]
    http.post(api + "/episode/vectorized_reset", json={"episode_ids": ids})
    rng = np.random.default_rng(0)

    def step():
        acts = rng.choice(3, n, p=[0.9, 0.08, 0.02])
        body = {
            "episode_actions": [
                {"episode_id": e, "action": int(a), "step_size": STEP, "return_all_states": True}
                for e, a in zip(ids, acts, strict=True)
            ]
        }
        data = http.post(api + "/episode/vectorized_step", json=body).json()
        [np.array(o, dtype=np.float32) for o in data["observations"]]
        done = [i for i, (t, u) in enumerate(zip(data["terminateds"], data["truncateds"], strict=True)) if t or u]
        if done:
            http.post(api + "/episode/vectorized_reset", json={"episode_ids": [ids[i] for i in done]})

    per = timed(step, args.repeats, args.min_seconds)
    http.close()
    return {"seconds_per_step": per}


def naive_numpy(n: int, args) -> dict:
    """What a student would write first: a plain Python loop over n single-engine NumPy envs
    (10 flights a step, 9 normals a row, one hazard draw a flight), resets by hand."""
    from reference_gym_env import SingleEngineEnv

    engines = [SingleEngineEnv() for _ in range(n)]
    for i, engine in enumerate(engines):
        engine.reset(seed=i)
    rng = np.random.default_rng(0)

    def step():
        for engine, action in zip(engines, rng.integers(0, 3, n), strict=True):
            _, _, terminated, truncated, _ = engine.step(int(action))
            if terminated or truncated:
                engine.reset()

    return {"seconds_per_step": timed(step, args.repeats, args.min_seconds)}


def model_floor(n: int, device: str, args, history: int = STEP) -> dict:
    """This model's floor: one compiled kernel that draws what a step of n engines draws (the 6
    hashes of each of the 10 rows: 9 Box-Muller normals, a profit normal, a hazard uniform) and
    writes the outputs a step must write: the rows into a fresh (n, history, 9) window, and a
    fresh (n, history, 9) terminal window of zeros. Nothing of the model's arithmetic: a bound."""
    from torch_student_env.sim import rng

    def draw(key, flight, window):
        j = torch.arange(1, STEP + 1, device=key.device).unsqueeze(1)
        bits = rng.stream_bits(rng.fold(key, flight + j), 6)  # (6, K, N)
        normals = torch.cat(rng.normal_pair(bits[:5]), dim=0)  # (10, K, N)
        uniform = rng.uniform24(bits[5])
        rows = (normals[:9] + normals[9] * uniform).permute(2, 1, 0)  # (N, K, 9)
        return torch.cat((window[:, STEP:], rows), dim=1), torch.zeros_like(window)

    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)  # one graph per (n, history)
    compiled = torch.compile(draw, dynamic=False)
    key = torch.arange(n, dtype=torch.int32, device=device)
    flight = torch.zeros(n, dtype=torch.int64, device=device)
    window = torch.zeros(n, history, 9, device=device)
    sync = torch.cuda.synchronize if window.device.type == "cuda" else (lambda: None)

    def step():
        nonlocal window
        window, _ = compiled(key, flight, window)

    return {"seconds_per_step": timed(step, args.repeats, args.min_seconds, sync=sync)}


FIRST_USE = """
import sys, time
start = time.perf_counter()
import torch
imported = time.perf_counter()
from torch_student_env import make_env
env = make_env(num_envs=4, seed=0)
env.reset()
env.step(torch.zeros(4, dtype=torch.int64))
done = time.perf_counter()
print(imported - start, done - imported, flush=True)
env.wait_compiled()  # after the measurement: the warm case then finds the library this one built
"""


def first_use(args) -> dict:
    """Import, `make_env(4)`, reset and one step in a fresh process: with empty compile caches
    (cold: eager while the library builds in the background), then again (warm: the library
    loads). Seconds of `import torch`, and of the rest. scripts/cold_start.py measures the
    other cold paths (compat, the seed scripts, the server, a machine without a compiler)."""
    import subprocess
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as cache:
        unset = ("TORCH_STUDENT_ENV_CACHE_DIR", "TORCH_STUDENT_ENV_FAST", "TORCH_STUDENT_ENV_WAIT_COMPILED")
        environ = {k: v for k, v in os.environ.items() if k not in unset}
        environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        for case in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", FIRST_USE], env=environ, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr)
            torch_s, rest_s = map(float, done.stdout.split()[:2])
            out[case] = {"import torch": torch_s, "beyond import torch": rest_s}
    return out


def floor(n: int, device: str, args) -> dict:
    """Writing the same float32 rows to memory: the bound no env can beat."""
    buf = torch.empty(n, STEP, 9, device=device)
    sync = torch.cuda.synchronize if buf.device.type == "cuda" else (lambda: None)
    return {"seconds_per_step": timed(lambda: buf.fill_(1.0), args.repeats, args.min_seconds, sync=sync)}


def policy_loop(n: int, args, rounds: int = 8, block: int = 60) -> dict:
    """The main job's step at N = n (fast path, unvalidated actions as in ppo_cnn.py) alone, and
    between forward passes of its 1D-CNN policy, which leave the step's code and data out of
    cache: median seconds of the `env.step` call itself, the two cases interleaved in blocks
    so that the machine's drifts hit both alike."""
    from torch_student_env.models import ActorCritic

    env = make_env(num_envs=n, step_size=STEP, seed=0, fast=True, validate_actions=False)
    agent = ActorCritic(max_flights=env.config.max_steps_per_episode)
    td = env.reset()
    env.step(torch.zeros(n, dtype=torch.int64))  # the compile, if any
    times: dict[str, list[float]] = {"alone": [], "between policy forwards": []}
    for r in range(rounds + 1):
        for mode, kept in times.items():
            for _ in range(block):
                if mode == "alone":
                    action = torch.zeros(n, dtype=torch.int64)
                else:
                    with torch.no_grad():
                        action = agent.get_action_and_value(td)[0]
                start = time.perf_counter()
                td = env.step(action)
                if r:  # the first round warms up
                    kept.append(time.perf_counter() - start)
    return {mode: statistics.median(kept) for mode, kept in times.items()}


def adapter_overheads(n: int, args) -> dict:
    """Per-step time of each adapter against the native env at the same N (defaults, CPU)."""
    from torch_student_env.adapters.gymnasium import GymnasiumVectorEnv
    from torch_student_env.adapters.sb3 import SB3VecEnv

    out = {"native": native(n, "cpu", None, args)["seconds_per_step"]}  # the default path, as the adapters
    out["torchrl"] = torchrl_adapter(n, "cpu", args)["seconds_per_step"]
    gym_env = GymnasiumVectorEnv(num_envs=n, seed=0, validate_actions=False)
    gym_env.reset()
    rng = np.random.default_rng(0)
    out["gymnasium"] = timed(lambda: gym_env.step(rng.integers(0, 3, n)), args.repeats, args.min_seconds)
    sb3 = SB3VecEnv(num_envs=n, seed=0, validate_actions=False)
    sb3.reset()
    out["sb3"] = timed(lambda: sb3.step(rng.integers(0, 3, n)), args.repeats, args.min_seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 64, 1024, 16384, 65536])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.3, help="minimum length of one timed block")
    parser.add_argument("--skip", nargs="*", default=[], help="row groups to skip: sync torchrl remote adapters")
    parser.add_argument("--native-only", action="store_true", help="only this env and the floor (= --skip all)")
    parser.add_argument("--no-history", action="store_true", help="skip the history=10/100 rows at 4,096 engines")
    parser.add_argument("--no-first-use", action="store_true", help="skip timing first use in fresh processes")
    parser.add_argument("--out", default="runs/bench.json")
    args = parser.parse_args()
    if args.native_only:
        args.skip = ["sync", "torchrl", "remote", "adapters"]
    sizes = list(args.sizes) + ([1 << 20] if args.device.startswith("cuda") else [])

    jobs: list[tuple[str, int, object]] = []
    for n in sizes:
        jobs += [
            ("this env, eager", n, lambda n=n: native(n, args.device, False, args)),
            ("this env, fast path", n, lambda n=n: native(n, args.device, True, args)),
            ("this model's floor", n, lambda n=n: model_floor(n, args.device, args)),
            ("memory-write floor", n, lambda n=n: floor(n, args.device, args)),
        ]
        if n <= 64 and "sync" not in args.skip:
            jobs.append(("naive NumPy env (a loop over single engines)", n, lambda n=n: naive_numpy(n, args)))
        if n < FAST_PATH_MIN_ENVS:  # where the eager step skips what no engine needs
            mixed = f"this env, eager, {'/'.join(f'{100 * p:.0f}' for p in POLICY_MIX)} % actions"
            jobs.append((mixed, n, lambda n=n: native(n, args.device, False, args, mix=POLICY_MIX)))
        if n >= 16384:  # where the terminal windows' memory shows
            lean = "this env, fast path, final_observation=False"
            jobs.append((lean, n, lambda n=n: native(n, args.device, True, args, final_observation=False)))
        if "torchrl" not in args.skip and n <= 65536:
            jobs.append(("TorchRL adapter", n, lambda n=n: torchrl_adapter(n, args.device, args)))
        if "sync" not in args.skip and n <= 65536:
            jobs.append(("gymnasium SyncVectorEnv (NumPy single engine)", n, lambda n=n: sync_vector(n, args)))
    if not args.no_history:  # the 100-row memory against the default window, at 4,096 engines
        for history in (10, 100):
            jobs += [
                (f"this env, fast path, history={history}", 4096,
                 lambda h=history: native(4096, args.device, True, args, history=h)),
                (f"this env, eager, history={history}", 4096,
                 lambda h=history: native(4096, args.device, False, args, history=h)),
                (f"this model's floor, history={history}", 4096,
                 lambda h=history: model_floor(4096, args.device, args, history=h)),
            ]  # fmt: skip
    if "torchrl" not in args.skip:
        jobs += [
            ("TorchRL SerialEnv (NumPy single engine)", n, lambda n=n: torchrl_batched(n, False, args)) for n in (4, 64)
        ]
        jobs += [("TorchRL ParallelEnv (NumPy single engine)", 4, lambda: torchrl_batched(4, True, args))]

    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": args.device,
        },
        "rows": [],
        "extra": {},
    }
    with server_process(["bench"]) if "remote" not in args.skip else contextlib.nullcontext() as server:
        if server:
            url = server.url
            jobs += [
                ("remote backend, reference server on loopback", n, lambda n=n: remote(n, url, args)) for n in (4, 64)
            ]
            jobs += [
                ("seed client pattern (1 POST per step)", n, lambda n=n: seed_pattern(n, url, args)) for n in (4, 64)
            ]
        for name, n, job in tqdm(jobs, desc="bench", unit="row"):
            r = job()
            seconds = r["seconds_per_step"]
            r.update(name=name, num_envs=n, env_steps_per_s=n / seconds, rows_per_s=n * STEP / seconds)
            results["rows"].append(r)
    if "adapters" not in args.skip:
        results["extra"]["adapter_seconds_per_step"] = {n: adapter_overheads(n, args) for n in (64, 4096)}
        results["extra"]["policy_loop_seconds_per_step"] = policy_loop(64, args)
    if not args.no_first_use:
        results["extra"]["first_use_seconds"] = first_use(args)
    results["extra"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwrote {args.out}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _ratios(cell: dict, sizes: list[int]) -> list[list[str]]:
    """The targets' ratios, each between two rows of the same run."""

    def sec(name, n):
        return cell[name, n]["seconds_per_step"] if (name, n) in cell else None

    out = []
    fast, naive = sec("this env, fast path", 4), sec("naive NumPy env (a loop over single engines)", 4)
    if fast and naive:
        out.append(["N=4: speed of the fast path (the default) / the naive NumPy env", f"{naive / fast:.2f}x"])
    for n in sizes:
        fast, floor_ = sec("this env, fast path", n), sec("this model's floor", n)
        if fast and floor_:
            out.append([f"N={n:,}: fast path step time / this model's floor", f"{fast / floor_:.2f}x"])
    for path in ("fast path", "eager"):
        h10, h100 = sec(f"this env, {path}, history=10", 4096), sec(f"this env, {path}, history=100", 4096)
        if h10 and h100:
            out.append([f"N=4,096, {path}: history=100 / history=10 step time", f"{h100 / h10:.2f}x"])
    h10, h100 = sec("this model's floor, history=10", 4096), sec("this model's floor, history=100", 4096)
    if h10 and h100:
        out.append(["N=4,096, this model's floor: history=100 / history=10", f"{h100 / h10:.2f}x"])
    return out


def markdown(results: dict) -> str:
    """The tables of docs/benchmarks.md from the results."""
    rows, extra, m = results["rows"], results["extra"], results["machine"]
    sizes = sorted({r["num_envs"] for r in rows})
    cell = {(r["name"], r["num_envs"]): r for r in rows}
    sized = [f"N={n:,}" for n in sizes]

    def per_size(name: str, fmt) -> list[str]:
        return [fmt(cell[name, n]) if (name, n) in cell else "" for n in sizes]

    names = list(dict.fromkeys(r["name"] for r in rows))
    native = ("this env, eager", "this env, fast path")
    lines = [
        f"{m['platform']}, {m['cpus']} CPUs, torch {m['torch']} ({m['threads']} threads), device {m['device']}",
        "",
        "env-steps/s (flight-rows/s = x10); step_size 10, random actions, median of repeats",
        "",
        *_table(
            ["implementation", *sized], [[n, *per_size(n, lambda r: f"{r['env_steps_per_s']:,.0f}")] for n in names]
        ),
        "",
        *_table(
            ["this env, per step", *sized],
            [[f"{n}: ms/step", *per_size(n, lambda r: f"{1e3 * r['seconds_per_step']:.3f}")] for n in native]
            + [[f"{n}: M flight-rows/s", *per_size(n, lambda r: f"{r['rows_per_s'] / 1e6:,.2f}")] for n in native]
            + [["state bytes per env", *per_size(native[0], lambda r: f"{r['state_bytes_per_env']:.0f}")]],
        ),
    ]
    if "adapter_seconds_per_step" in extra:
        by_size = extra["adapter_seconds_per_step"]
        header = ["adapter (defaults, CPU)", *(f"N={n}: ms/step (x native)" for n in by_size)]
        body = [[a, *(f"{1e3 * v[a]:.3f} (x{v[a] / v['native']:.2f})" for v in by_size.values())]
                for a in ("native", "torchrl", "gymnasium", "sb3")]  # fmt: skip
        lines += ["", *_table(header, body)]
    if "policy_loop_seconds_per_step" in extra:
        loop = extra["policy_loop_seconds_per_step"]
        lines += ["", *_table(["the main job's step (N=64, fast path)", "us/step"],
                              [[mode, f"{1e6 * v:.0f}"] for mode, v in loop.items()])]  # fmt: skip
    lines += ["", *_table(["ratio, same run", "value"], _ratios(cell, sizes))]
    if "first_use_seconds" in extra:
        header = ["first use in a fresh process (import, make_env(4), reset, 1 step)", "import torch", "beyond it"]
        lines += ["", *_table(header,
                              [[case, f"{v['import torch']:.1f} s", f"{v['beyond import torch']:.1f} s"]
                               for case, v in extra["first_use_seconds"].items()])]  # fmt: skip
    lines += ["", f"Peak host memory of the benchmark process: {extra['peak_rss_mb']:,.0f} MB."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

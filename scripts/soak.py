"""Soak test: K client processes step a local reference server for T seconds, each checked
step by step against a local twin.

    python scripts/soak.py --clients 8 --seconds 60
    python scripts/soak.py --clients 32 --seconds 60 --json soak32.json
    python scripts/soak.py --fill-token      # one token at its engine limit: memory, refusal
    python scripts/soak.py --kill --rounds 3 # kill -9 the server mid-load: nothing acknowledged is lost
    python scripts/soak.py --kill --workers 2 --clients 8  # kill -9 one worker of a class front

The server runs in its own process on 127.0.0.1 (a free port), so its memory is measured alone.
Each client owns a token and `make_env(backend="remote", seed=S)`, whose engines the server keys
as the embedded env's (`env_indices`), so a local `make_env(seed=S)` given the same actions must
return the same TensorDict at every step. Any difference is a mismatch; any exception is an
error and stops that client (its twin can no longer follow). Actions are random, with repairs
and sales, so episodes end and auto-reset all the time.

Prints latency percentiles, steps/s, the server's RSS before and after, mismatches and errors,
lost steps (the server's per-episode step counter against the client's count), and exits 1 if
any mismatch, lost step or error was seen. Needs the [server] extra.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from pathlib import Path

import requests
import torch

from torch_student_env.server import procs, server_process


def _same(a, b) -> bool:
    """Whether two step outputs agree: integers and flags exactly, floats to float32 rounding.

    The server's groups and the client's twin are different configurations (window, autoreset
    mode), so when both step compiled they run different graphs, whose fused arithmetic may
    round a sensor reading differently in its last bit. Eager on both sides is exact."""
    if set(a.keys()) != set(b.keys()):
        return False
    for key in a.keys():
        x, y = a[key], b[key]
        same = torch.allclose(x, y, rtol=1e-5, atol=1e-6) if x.is_floating_point() else torch.equal(x, y)
        if not same:
            return False
    return True


def _client(k: int, url: str, args: argparse.Namespace, ready, start, results, progress) -> None:
    """One client process: remote env and local twin stepped with the same random actions."""
    import torch

    from torch_student_env import make_env

    torch.set_num_threads(1)
    seed = args.seed + k
    common = dict(num_envs=args.envs, seed=seed, step_size=args.step_size)
    remote = make_env(backend="remote", server_url=url, user_token=f"soak-{k}", timeout=args.timeout, **common)
    twin = make_env(**common)
    rng = torch.Generator().manual_seed(seed)
    probs = torch.tensor([0.9, 0.05, 0.05])  # fly, repair, sell: episodes end every ~20 steps
    latencies, mismatches, error = [], 0, None
    with ready.get_lock():
        ready.value += 1
    start.wait()
    began = time.monotonic()
    deadline = began + args.seconds
    try:
        first = remote.reset()
        mismatches += int(not _same(first, twin.reset()))
        while time.monotonic() < deadline:
            actions = torch.multinomial(probs, args.envs, replacement=True, generator=rng)
            t0 = time.perf_counter()
            td = remote.step(actions)
            latencies.append(time.perf_counter() - t0)
            mismatches += int(not _same(td, twin.step(actions)))
            with progress.get_lock():
                progress.value += 1
        lost = _lost_steps(url, f"soak-{k}", remote.backend.episode_ids, len(latencies))
    except Exception as err:  # noqa: BLE001 - counted and reported, the soak goes on for the others
        error, lost = f"{type(err).__name__}: {err}", None
    finally:
        remote.close()
    elapsed = time.monotonic() - began
    report = {"client": k, "latencies": latencies, "mismatches": mismatches, "error": error, "lost": lost}
    results.put(report | {"elapsed": elapsed})


def _lost_steps(url: str, token: str, episode_ids: list[str], steps: int) -> int:
    """Steps the client took that the server did not apply exactly once, summed over episodes.

    Every env of the client is stepped at every step (auto-reset keeps the episode id), so each
    episode's `step_counter` on the server must equal the client's number of steps.
    """
    counters = [
        requests.get(f"{url}/api/v1/episode/{e}", headers={"User-Token": token}, timeout=30).json()["step_counter"]
        for e in episode_ids
    ]
    return sum(abs(c - steps) for c in counters)


_QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def soak(args: argparse.Namespace) -> dict:
    """Run the soak and return its figures."""
    db = ("--db", str(args.db)) if args.db else ()  # scores in memory unless a file is named
    db += ("--durable",) if args.durable else ()
    threads = ("--threads", str(args.server_threads))
    with server_process([f"soak-{k}" for k in range(args.clients)], *db, *threads) as server:
        rss_before = procs.rss_mib(server.process.pid)
        ctx = mp.get_context("spawn")
        ready, start, results, progress = ctx.Value("l", 0), ctx.Event(), ctx.Queue(), ctx.Value("l", 0)
        clients = [
            ctx.Process(target=_client, args=(k, server.url, args, ready, start, results, progress))
            for k in range(args.clients)
        ]
        for p in clients:
            p.start()
        print(f"{args.clients} clients starting (each imports torch and builds its envs) ...", flush=True)
        while ready.value < args.clients:  # the clock starts when every client is ready
            if not all(p.is_alive() for p in clients):
                raise RuntimeError("a client process died before the start")
            time.sleep(0.1)
        cpu_before = procs.cpu_seconds(server.process.pid)
        start.set()
        t0 = time.monotonic()
        while (left := args.seconds - (time.monotonic() - t0)) > 0:
            time.sleep(min(5.0, left))
            rss = procs.rss_mib(server.process.pid) or 0
            print(f"  {time.monotonic() - t0:5.0f} s  {progress.value:,} steps  server RSS {rss:.0f} MiB", flush=True)
        reports = [results.get(timeout=args.seconds + 120) for _ in clients]
        cpu_after = procs.cpu_seconds(server.process.pid)
        for p in clients:
            p.join(timeout=30)
        rss_after = procs.rss_mib(server.process.pid)
    latencies = [x for r in reports for x in r["latencies"]]
    steps = len(latencies)
    steps_per_s = sum(len(r["latencies"]) / r["elapsed"] for r in reports if r["elapsed"] > 0)
    return {
        "clients": args.clients,
        "server_threads": args.server_threads,
        "envs_per_client": args.envs,
        "step_size": args.step_size,
        "seconds": args.seconds,
        "steps": steps,
        "steps_per_s": round(steps_per_s, 1),
        "env_steps_per_s": round(steps_per_s * args.envs, 1),
        "latency_ms": {name: round(1e3 * _percentile(latencies, q), 2) for name, q in _QUANTILES}
        | {"max": round(1e3 * max(latencies, default=float("nan")), 2)},
        "server_rss_mib": {"before": _round(rss_before), "after": _round(rss_after)},
        # the server's own CPU time over the run (its share of the 2 cores), per vector step answered
        "server_cpu_ms_per_step": None
        if cpu_before is None or cpu_after is None or not steps
        else round(1e3 * (cpu_after - cpu_before) / steps, 2),
        "mismatches": sum(r["mismatches"] for r in reports),
        "lost_steps": sum(r["lost"] or 0 for r in reports),
        "errors": [f"client {r['client']}: {r['error']}" for r in reports if r["error"]],
    }


def fill_one_token() -> dict:
    """One token filled to its engine limit on an in-process `ServerState`: memory, the refusal
    past the limit, and how long the largest allowed request holds its group."""
    from torch_student_env.server.state import ServerError, ServerState

    state = ServerState()
    limits = state.limits
    before = procs.rss_mib(os.getpid())
    sessions = [state.create_session("t") for _ in range(limits.max_sessions_per_token)]
    groups, refused = [], None
    try:
        for sid in sessions:  # groups of the largest size a request may create, until refused
            for _ in range(limits.max_envs_per_session // limits.max_envs_per_request):
                groups.append(state.create_group("t", sid, limits.max_envs_per_request, 1000))
    except ServerError as err:
        refused = f"{err.status}: {err.detail}"
    for group in groups:
        state.reset("t", group.episode_ids, [None] * len(group.episode_ids), None, None)
    start = time.perf_counter()
    for group in groups:
        actions = [{"episode_id": e, "action": 0, "step_size": limits.max_step_size} for e in group.episode_ids]
        state.step("t", actions)
    return {
        "engines_held": sum(len(g.episode_ids) for g in groups),
        "refused": refused,
        "rss_mib": {"before": _round(before), "after": _round(procs.rss_mib(os.getpid()))},
        "largest_request_holds_its_group_s": round((time.perf_counter() - start) / max(len(groups), 1), 3),
    }


def _kill_client(
    k: int, token: str, url: str, args: argparse.Namespace, stop, acknowledged: list, outcome: dict, stepping: list
) -> None:
    """One client thread until `stop` or an error: it joins `stepping` once its episodes have
    started; every finished episode whose step answer it received goes to `acknowledged` as
    (token, return, flights); the error that ended it (the server was killed) goes to `outcome`,
    by type name."""
    from torch_student_env import make_env
    from torch_student_env.backends.remote import RemoteError

    try:
        env = make_env(
            num_envs=args.envs, step_size=args.step_size, seed=args.seed + k, backend="remote",
            server_url=url, user_token=token, timeout=args.timeout, max_retries=1,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(args.seed + k)
        probs = torch.tensor([0.8, 0.05, 0.15])  # sales: episodes end every few steps
        env.reset()
        stepping.append(k)
        while not stop.is_set():
            td = env.step(torch.multinomial(probs, args.envs, replacement=True, generator=gen))
            for i in torch.nonzero(td["episode_ended"]).flatten().tolist():
                acknowledged.append((token, float(td["episode_return"][i]), int(td["episode_length"][i])))
        outcome[k] = "stopped"
    except RemoteError as err:  # named: ServerUnavailable when the server is gone
        outcome[k] = type(err).__name__
    except Exception as err:  # noqa: BLE001 - reported: anything unnamed fails the check
        outcome[k] = f"unnamed {type(err).__name__}: {err}"


def tokens_by_worker(url: str, front_pid: int, candidates: list[str]) -> dict[int, list[str]]:
    """Worker index -> the candidate tokens nginx routes to it. nginx's consistent hash places
    each worker by its socket path, which is new for every front, so the split is asked, not
    computed: a session is created through the front, then deleted on the worker that has it."""
    from torch_student_env.server.front import ask_worker, worker_sockets

    sockets = worker_sockets(front_pid)
    routed: dict[int, list[str]] = {i: [] for i in sockets}
    for token in candidates:
        answer = requests.post(f"{url}/api/v1/session/create", headers={"User-Token": token}, timeout=30)
        answer.raise_for_status()
        session = answer.json()["session_id"]
        path = f"/api/v1/session/{session}"
        owners = [i for i, s in sockets.items() if ask_worker(s, "DELETE", path, token) == 200]
        if len(owners) != 1:
            raise RuntimeError(f"the session of {token} was found on workers {owners}, not on one")
        routed[owners[0]].append(token)
    return routed


def kill_soak(args: argparse.Namespace) -> dict:
    """`--rounds` times: K client threads step a server on the `--db` file, the server is killed
    with SIGKILL mid-load, and restarted on the same file. With `--workers N`, a front of N
    workers instead, of which worker 0 is killed (the front restarts it) while the others' clients
    go on stepping. Then every finished episode a client saw acknowledged must be in the database
    and on the score endpoint, and the file must pass `PRAGMA integrity_check`."""
    import signal
    import tempfile
    import threading

    from torch_student_env.server.front import worker_processes
    from torch_student_env.server.store import ScoreStore, integrity

    # with a front, a pool of tokens from which each round picks clients spread over the workers
    tokens = [f"soak-{k}" for k in range(args.clients * (8 if args.workers else 1))]
    folder = tempfile.TemporaryDirectory() if args.db is None else None
    db = str(args.db or Path(folder.name) / "scores.sqlite")
    acknowledged: list = []
    outcomes: list[str] = []
    on_killed: list[str] = []  # with a front: the outcomes of the killed worker's clients
    flags = ["--db", db, *(["--durable"] if args.durable else [])]
    if args.workers:
        flags += ["--workers", str(args.workers)]
    for _ in range(args.rounds):
        with server_process(tokens, *flags) as server:
            chosen = tokens[: args.clients]
            if args.workers:  # round-robin over the workers, so the killed one and the others all have clients
                routed = tokens_by_worker(server.url, server.process.pid, tokens)
                if not all(routed.values()):
                    raise RuntimeError(f"no token of {len(tokens)} routed to some worker: {routed}")
                lists = [routed[i] for i in sorted(routed)]
                chosen = [lists[k % len(lists)][k // len(lists)] for k in range(args.clients)]
            stop, outcome, stepping = threading.Event(), {}, []
            threads = [
                threading.Thread(
                    target=_kill_client, args=(k, t, server.url, args, stop, acknowledged, outcome, stepping)
                )
                for k, t in enumerate(chosen)
            ]
            for t in threads:
                t.start()
            # every client's session exists before the kill, however slowly a loaded machine starts them
            deadline = time.monotonic() + args.timeout * 4 + 60
            while len(stepping) + len(outcome) < args.clients and time.monotonic() < deadline:
                time.sleep(0.05)  # waiting for the clients' sessions, not timing anything
            time.sleep(args.seconds)  # the load runs for this long before the kill (not a timing check)
            if args.workers:  # one worker: its clients get an error, the others go on until stopped
                os.kill(worker_processes(server.process.pid)[0], signal.SIGKILL)
                time.sleep(args.seconds)  # the others' load goes on this long after the kill
            else:
                server.process.send_signal(signal.SIGKILL)
                server.process.wait(timeout=30)
                for t in threads:
                    t.join(timeout=args.timeout * 4 + 30)
            stop.set()
            for t in threads:
                t.join(timeout=args.timeout * 4 + 30)
            hung = sum(t.is_alive() for t in threads)
            ended = [outcome.get(k, "no answer") for k in range(args.clients)]
            if args.workers:
                on_killed += [o for o, t in zip(ended, chosen, strict=True) if t in routed[0]]
            outcomes += ended + ["hung"] * hung
    with server_process(tokens, "--db", db) as server:  # restarted once more: what does it serve?
        served = sum(
            (requests.get(f"{server.url}/api/v1/user/{t}/score", params={"limit": 1000}, timeout=30).json()["metrics"]
             or {}).get("total_episodes", 0)
            for t in tokens
        )  # fmt: skip
    store = ScoreStore(db)
    found = Counter((t, round(e.total_reward, 2), e.flights) for t in tokens for e in store.last(t, 1000))
    store.close()
    wanted = Counter((t, round(r, 2), f) for t, r, f in acknowledged)
    missing = wanted - found
    check = integrity(db)
    if folder is not None:
        folder.cleanup()
    return {
        "clients": args.clients,
        "rounds (kill -9, restart)": args.rounds,
        "episodes_acknowledged": sum(wanted.values()),
        "episodes_found": sum(found.values()),
        "episodes_served_by_the_score_endpoint": served,
        "acknowledged_but_missing": sum(missing.values()),
        "integrity_check": check,
        "client_outcomes": dict(Counter(outcomes)),
        **({"outcomes_on_the_killed_worker": dict(Counter(on_killed))} if args.workers else {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="client processes (K)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they step (T)")
    parser.add_argument("--envs", type=int, default=4, help="engines per client")
    parser.add_argument("--step-size", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0, help="each remote call's deadline (s)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--fill-token", action="store_true", help="instead: fill one token to its limits")
    parser.add_argument("--durable", action="store_true", help="the server fsyncs every commit (--durable)")
    parser.add_argument("--server-threads", type=int, default=1, help="the server's torch threads (its --threads)")
    parser.add_argument("--kill", action="store_true", help="instead: kill -9 the server mid-load, restart, check")
    parser.add_argument("--rounds", type=int, default=2, help="with --kill: kills and restarts")
    parser.add_argument(
        "--workers", type=int, default=0, help="with --kill: a front of N workers (nginx), of which one is killed"
    )
    parser.add_argument(
        "--db", type=Path, help="the server's score database (default: in memory; with --kill, a temporary file)"
    )
    args = parser.parse_args(argv)
    if args.fill_token:
        print(json.dumps(fill_one_token(), indent=2))
        return 0
    if args.kill:
        figures = kill_soak(args)
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        # a killed worker's clients: unavailable while it restarts, or unknown episodes once it is back
        named = all(o in ("ServerUnavailable", "NotFoundError", "stopped") for o in figures["client_outcomes"])
        if args.workers:  # the killed worker's clients saw a named error; every other client was stopped
            killed = figures["outcomes_on_the_killed_worker"]
            others = Counter(figures["client_outcomes"]) - Counter(killed)
            named = named and "stopped" not in killed and set(others) == {"stopped"}
        sound = figures["integrity_check"] == "ok" and not figures["acknowledged_but_missing"]
        return 0 if named and sound and figures["episodes_acknowledged"] > 0 else 1
    if not 1 <= args.clients <= 256:
        parser.error(f"--clients must be in [1, 256], got {args.clients}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    figures = soak(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if figures["mismatches"] or figures["lost_steps"] or figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load test of the reference server whose clients are not the bottleneck.

    python scripts/load.py --clients 4                    # one server process, 4 clients x 4 engines
    python scripts/load.py --clients 64 --workers 2       # nginx in front of 2 workers
    python scripts/load.py --url http://127.0.0.1:8001 --clients 8   # a server you started

Each client replays the seed client's (1.0.1) request sequence with its own bodies: session,
vectorized create (4 engines, auto-reset), vectorized reset, then vectorized steps of 10 flights,
as fast as the server answers. Clients are asyncio tasks over keep-alive HTTP/1.1 connections,
spread over `--procs` processes, with no numpy and no JSON parsing of step answers: a vector step
costs the generator a small fraction of what it costs the server (the report shows both).

After `--warmup` seconds, it measures for `--seconds`: vector steps/s, p50 and p99 latency,
errors (any answer but 200, any broken connection: the client then starts again, as a student
would, with a new session), and the CPU seconds of every process of the server (workers, nginx,
the supervisor) per vector step, read from /proc (Linux). `--json` writes the report.
The server's compiled step is built before it starts, so no build runs during the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_SIZE = 10  # the seed client's default
ENGINES = 4  # the seed's vectorized example


def _role(pid: int) -> str:
    """What a server process is: nginx, a worker (--workers), the front's supervisor, a build, the server."""
    from torch_student_env.server import procs as procfs

    text = " ".join(procfs.command_line(pid))
    if not text:
        return "gone"
    if "nginx" in text:
        return "nginx"
    if "--uds" in text:
        return "workers"
    if "--workers" in text:
        return "supervisor"
    if "torch_student_env.build" in text:
        return "build"
    return "server"


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just what the protocol needs."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", session: str | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nUser-Token: {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        )
        if session is not None:
            head += f"Session-ID: {session}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        try:
            status_line, *header_lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in header_lines if ": " in line)
            if "content-length" in headers:
                data = await self.reader.readexactly(int(headers["content-length"]))
            else:  # chunked
                data = b""
                while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                    data += (await self.reader.readexactly(size + 2))[:-2]
                await self.reader.readuntil(b"\r\n")
            if headers.get("connection") == "close":
                self.close()
            return int(status_line.split()[1]), data
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Failed(Exception):
    """An answer other than 200: the client starts again."""


async def _ok(connection: Connection, method: str, path: str, body: dict | None = None, **kw) -> bytes:
    status, data = await connection.request(method, path, json.dumps(body).encode() if body else b"", **kw)
    if status != 200:
        raise Failed(f"{path}: HTTP {status}")
    return data


async def _client(k: int, host: str, port: int, window: tuple[float, float], record: dict) -> None:
    """One student: the seed client's sequence, steps until the window closes; starts again on errors."""
    connection = Connection(host, port, f"load-{k}")
    rng = random.Random(k)
    while time.monotonic() < window[1]:
        try:
            session = json.loads(await _ok(connection, "POST", "/api/v1/session/create"))["session_id"]
            config = {"env_type": "DegradationEnv", "max_steps_per_episode": 1000, "auto_reset": True,
                      "step_size": STEP_SIZE, "reward_config": {}}  # fmt: skip
            created = {"env_config": config, "num_envs": ENGINES}
            ids = json.loads(await _ok(connection, "POST", "/api/v1/vectorized/episodes/create", created,
                                       session=session))["episode_ids"]  # fmt: skip
            reset = {"episode_ids": ids, "seeds": [None] * ENGINES}
            await _ok(connection, "POST", "/api/v1/episode/vectorized_reset", reset)
            # the seed client's step bodies, made once: one per engine for each action (fly, repair, sell)
            bodies = [[json.dumps({"episode_id": e, "action": a, "step_size": STEP_SIZE, "return_all_states": True})
                       for a in (0, 1, 2)] for e in ids]  # fmt: skip
            while (now := time.monotonic()) < window[1]:
                # fly mostly, with the odd repair and sale, so episodes end and auto-reset
                chosen = rng.choices((0, 1, 2), (18, 1, 1), k=ENGINES)
                body = '{"episode_actions": [' + ", ".join(b[a] for b, a in zip(bodies, chosen, strict=True)) + "]}"
                status, _ = await connection.request("POST", "/api/v1/episode/vectorized_step", body.encode())
                if status != 200:
                    raise Failed(f"/api/v1/episode/vectorized_step: HTTP {status}")
                done = time.monotonic()
                if now >= window[0]:
                    record["latencies"].append(done - now)
        except (Failed, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as err:
            if time.monotonic() >= window[0]:
                record["errors"].append(f"{type(err).__name__}: {err}")
            connection.close()
            await asyncio.sleep(0.05)  # a student's script does not retry in a tight loop either
    connection.close()


def _process(clients: list[int], host: str, port: int, window: tuple[float, float], out) -> None:
    """One generator process: its clients as asyncio tasks; its latencies, errors and CPU."""
    record: dict = {"latencies": [], "errors": []}

    async def cpu_in_window() -> float:
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        before = time.process_time()  # this process's CPU, all its threads
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        return time.process_time() - before

    async def run() -> float:
        cpu, *_ = await asyncio.gather(cpu_in_window(), *(_client(k, host, port, window, record) for k in clients))
        return cpu

    try:  # uvloop (the [server] extra) where installed: a third less of the generator's CPU per request
        import uvloop

        cpu = uvloop.run(run())
    except ImportError:
        cpu = asyncio.run(run())
    out.put(record | {"cpu": cpu})


def run_load(
    url: str,
    server_pid: int | None,
    clients: int,
    procs: int,
    warmup: float,
    seconds: float,
    profile: str | None = None,
) -> dict:
    """Drive `clients` students against `url`; the report (server CPU needs its pid). `profile`:
    a py-spy profile of the server's processes over the window, as raw stacks in that file."""
    from torch_student_env.server import procs as procfs  # here: the generator's processes never import torch

    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic() + 1.0  # every process started and connected
    window = (start + warmup, start + warmup + seconds)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_process, args=(list(range(p, clients, procs)), host, int(port), window, out))
        for p in range(min(procs, clients))
    ]
    for w in workers:
        w.start()
    time.sleep(max(0.0, window[0] - time.monotonic()))  # waiting for the window, not timing anything
    tree = procfs.process_tree(server_pid) if server_pid else []
    cpu_before = {pid: procfs.cpu_seconds(pid) or 0.0 for pid in tree}
    spy = None
    if profile and server_pid:
        command = ["py-spy", "record", "--subprocesses", "-p", str(server_pid), "-d", str(int(seconds))]
        command += ["-r", "200", "-f", "raw", "-o", profile]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(max(0.0, window[1] - time.monotonic()))
    by_role: dict[str, float] = {}
    for pid in tree:
        used = (procfs.cpu_seconds(pid) or cpu_before[pid]) - cpu_before[pid]  # a process gone since: its share is lost
        by_role[_role(pid)] = by_role.get(_role(pid), 0.0) + used
    server_cpu = sum(by_role.values()) if tree else None
    records = [out.get(timeout=120) for _ in workers]
    if spy is not None:
        spy.wait(timeout=60)
    for w in workers:
        w.join(timeout=30)
    latencies = sorted(x for r in records for x in r["latencies"])
    errors = [e for r in records for e in r["errors"]]
    steps = len(latencies)

    def pct(q: float) -> float | None:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    return {
        "clients": clients,
        "engines_per_client": ENGINES,
        "seconds": seconds,
        "vector_steps_per_s": round(steps / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_errors": errors[:5],
        "server_processes": len(tree),
        "server_cpu_ms_per_step": round(1000 * server_cpu / steps, 3) if steps and server_cpu is not None else None,
        "server_cpu_ms_per_step_by_role": {r: round(1000 * c / steps, 3) for r, c in by_role.items()}
        if steps
        else None,
        "generator_cpu_ms_per_step": round(1000 * sum(r["cpu"] for r in records) / steps, 3) if steps else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--workers", type=int, default=0, help="server worker processes behind nginx (0: one process)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--url", help="an already running server (its CPU is then not measured)")
    parser.add_argument("--json", help="write the report to this file")
    parser.add_argument("--profile", help="py-spy the server over the window: raw stacks to this file")
    args = parser.parse_args(argv)
    for name in ("clients", "procs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.url:
        report = run_load(args.url, None, args.clients, args.procs, args.warmup, args.seconds)
    else:
        # imported here: the generator's processes (spawned, they import this module) stay free of torch
        from torch_student_env.build import COMMON, build_common
        from torch_student_env.server import server_process

        build_common([name for name in COMMON if "server" in name])  # no build during the measurement
        tokens = [f"load-{k}" for k in range(args.clients)]
        folder = tempfile.TemporaryDirectory()
        # workers share one score file (as a class server does); one process keeps its scores in memory
        flags = ("--workers", str(args.workers), "--db", f"{folder.name}/scores.sqlite") if args.workers else ()
        with folder, server_process(tokens, *flags) as server:
            pid = server.process.pid
            report = run_load(server.url, pid, args.clients, args.procs, args.warmup, args.seconds, args.profile)
        report["workers"] = args.workers
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

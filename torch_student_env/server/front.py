"""The class server: nginx in front of N worker processes, started and supervised by one command.

    python -m torch_student_env.server --workers 4 --db scores.sqlite --tokens-file tokens.txt

A reference server is one Python process, so it holds one core however many the machine has.
`--workers N` runs N of them instead, each on a Unix socket in a run folder, and nginx in front on
the public port. nginx routes each request by a consistent hash of its `User-Token` header, so a
token's sessions and groups live in exactly one worker, which owns them alone (no shared state
but the score database). Scores go to the one SQLite file in WAL mode, which every worker opens:
a worker commits a finished episode before the answer that reports it leaves, as a single
process does, and any worker serves any token's score and the leaderboard.

Faults: a worker that dies (kill -9, out of memory) is started again on the same socket. While it
is down, its tokens get a 503 whose detail says so (the seed client raises it), and their sessions
are gone, as after a restart of a single server: the client starts a new one. nginx never moves a
token to another worker (`proxy_next_upstream off`, no `max_fails`), so the other workers' tokens
notice nothing and a token's new session lands where its old one was. Finished episodes were
committed before they were acknowledged and are never lost. If nginx itself exits, the front
stops the workers and exits with an error.

nginx comes from the system's packages (Debian: `apt-get install nginx`); the front writes its
configuration (`nginx_config`) into the run folder, with the workers' logs and nginx's error log.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch_student_env.server import procs

log = logging.getLogger("torch_student_env.server")

_START_TIMEOUT_S = 120.0  # a cold worker imports torch and loads (or starts building) its step
_QUICK_DEATHS = 5  # a worker dying this many times in a row within _QUICK_S of its start: give up
_QUICK_S = 10.0


class FrontError(RuntimeError):
    """The front cannot start or keep running: the message names the part and the cause."""


def find_nginx() -> str:
    """The nginx binary (PATH, then /usr/sbin), or a `FrontError` that says how to install it."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        raise FrontError("--workers needs nginx in front of the workers: install it (Debian: apt-get install nginx)")
    return found


def nginx_config(run_dir: Path, host: str, port: int, sockets: list[Path], max_body_bytes: int) -> str:
    """nginx's configuration: `host:port` proxied to the workers' sockets by `User-Token` hash."""
    upstreams = "\n".join(f"        server unix:{s};" for s in sockets)
    temp = "\n".join(
        f"    {kind}_temp_path {run_dir / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # nginx answers a gone worker itself: a JSON 503 in the protocol's error shape
    down = '{"detail": "the server process of this token is restarting: its sessions are gone, start a new one"}'
    # Started as root, nginx would run its workers as `nobody`, who may not reach the sockets (a
    # run folder under a private one): they run as the server's own user, as the Python workers do.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""# written by torch_student_env.server --workers; edits are overwritten at the next start
{user}daemon off;
master_process on;
worker_processes 1;
pid {run_dir / "nginx.pid"};
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
{temp}
    # the workers refuse bodies over their limit with the protocol's 413 while the body streams
    # in (GuardBodies); nginx only bounds what it would ever pass on, and never buffers a body
    client_max_body_size {2 * max_body_bytes};
    proxy_request_buffering off;
    upstream workers {{
        # one worker per token, for good: no failover (a session lives in one process)
        hash $http_user_token consistent;
{upstreams}
        keepalive 256;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream off;
            proxy_read_timeout 600s;
            proxy_intercept_errors off;
            error_page 502 504 = @restarting;
        }}
        location @restarting {{
            default_type application/json;
            return 503 '{down}';
        }}
    }}
}}
"""


@dataclass
class _Worker:
    index: int
    socket: Path
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    quick_deaths: int = 0
    restarts: int = 0


@dataclass
class Front:
    """nginx on `host:port` in front of `workers` server processes; `worker_args` are the server
    options each worker runs with (tokens, limits, the shared `--db`)."""

    host: str
    port: int
    workers: int
    worker_args: list[str]
    max_body_bytes: int
    run_dir: Path | None = None
    _workers: list[_Worker] = field(default_factory=list)
    _nginx: subprocess.Popen | None = None
    _stopping: bool = False

    def start(self) -> None:
        """Start the workers, wait until each accepts, then nginx; raises `FrontError`."""
        if self.workers < 1:
            raise FrontError(f"--workers must be >= 1, got {self.workers}")
        nginx = find_nginx()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="torch-student-env-front-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        self._workers = [
            _Worker(i, self.run_dir / f"worker-{i}.sock", self.run_dir / f"worker-{i}.log") for i in range(self.workers)
        ]
        for worker in self._workers:
            self._spawn(worker)
        for worker in self._workers:
            self._wait_ready(worker)
        config = self.run_dir / "nginx.conf"
        config.write_text(
            nginx_config(self.run_dir, self.host, self.port, [w.socket for w in self._workers], self.max_body_bytes)
        )
        command = [nginx, "-p", str(self.run_dir), "-c", str(config), "-e", str(self.run_dir / "nginx-error.log")]
        self._nginx = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not _accepts_tcp(self.host, self.port):
            if self._nginx.poll() is not None:
                error = self._nginx.stderr.read().decode(errors="replace").strip() if self._nginx.stderr else ""
                self.stop()
                where = error or f"see {self.run_dir / 'nginx-error.log'}"
                raise FrontError(f"nginx exited with code {self._nginx.returncode}: {where}")
            if time.monotonic() > deadline:
                self.stop()
                raise FrontError(f"nginx did not open {self.host}:{self.port} within 30 s")
            time.sleep(0.05)  # polling a start, not timing anything
        log.info(
            "serving on http://%s:%d: nginx in front of %d workers (run folder %s)",
            self.host, self.port, self.workers, self.run_dir,
        )  # fmt: skip

    def supervise(self) -> int:
        """Restart workers that die until SIGTERM / SIGINT or nginx exits; the exit code."""
        stop = {"signal": None}

        def on_signal(signum, _frame) -> None:
            stop["signal"] = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while stop["signal"] is None:
                if self._nginx is not None and self._nginx.poll() is not None:
                    log.error("nginx exited with code %s: stopping the workers", self._nginx.returncode)
                    return 1
                for worker in self._workers:
                    code = worker.process.poll() if worker.process else None
                    if code is not None and not self._restart(worker, code):
                        return 1
                time.sleep(0.1)  # the supervision loop's period
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()

    def stop(self) -> None:
        """nginx first (no new requests), then the workers; waits for each."""
        self._stopping = True
        if self._nginx is not None and self._nginx.poll() is None:
            self._nginx.send_signal(signal.SIGQUIT)  # graceful: ends the requests in flight
            _wait_or_kill(self._nginx, 10)
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.terminate()
        for worker in self._workers:
            if worker.process is not None:
                _wait_or_kill(worker.process, 15)
            with contextlib.suppress(FileNotFoundError):
                worker.socket.unlink()

    def _spawn(self, worker: _Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            worker.socket.unlink()  # a killed worker's socket file stays behind
        command = [sys.executable, "-m", "torch_student_env.server", "--uds", str(worker.socket), *self.worker_args]
        with open(worker.log, "ab") as out:
            worker.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        worker.started = time.monotonic()

    def _wait_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts_unix(worker.socket):
            if worker.process.poll() is not None:
                self.stop()
                raise FrontError(
                    f"worker {worker.index} exited with code {worker.process.returncode}: see {worker.log}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise FrontError(
                    f"worker {worker.index} did not start within {_START_TIMEOUT_S:.0f} s: see {worker.log}"
                )
            time.sleep(0.05)  # polling a start, not timing anything

    def _restart(self, worker: _Worker, code: int) -> bool:
        """Start a dead worker again; False when it keeps dying at start-up (the front gives up)."""
        quick = time.monotonic() - worker.started < _QUICK_S
        worker.quick_deaths = worker.quick_deaths + 1 if quick else 0
        if worker.quick_deaths >= _QUICK_DEATHS:
            log.error(
                "worker %d died %d times within %.0f s of its start: see %s",
                worker.index,
                _QUICK_DEATHS,
                _QUICK_S,
                worker.log,
            )
            return False
        worker.restarts += 1
        log.warning("worker %d exited with code %s: starting it again (its sessions are gone)", worker.index, code)
        self._spawn(worker)
        return True

    @property
    def worker_pids(self) -> list[int]:
        """The workers' process ids now (tests and fault scripts kill them)."""
        return [w.process.pid for w in self._workers if w.process is not None]


def _workers(supervisor: int) -> dict[int, tuple[int, str]]:
    """Worker index -> (pid, socket path) of the front whose supervisor process is `supervisor`,
    from the workers' command lines in /proc (Linux)."""
    found = {}
    for pid in procs.children().get(supervisor, []):
        command = procs.command_line(pid)
        if "--uds" in command:
            path = command[command.index("--uds") + 1]
            found[int(Path(path).name.removeprefix("worker-").removesuffix(".sock"))] = (pid, path)
    return found


def worker_processes(supervisor: int) -> dict[int, int]:
    """Worker index -> pid of the front whose supervisor process is `supervisor`: how a test or a
    fault script finds the worker to kill."""
    return {i: pid for i, (pid, _) in _workers(supervisor).items()}


def worker_sockets(supervisor: int) -> dict[int, str]:
    """Worker index -> the Unix socket it serves on, for the front whose supervisor process is
    `supervisor`: how a fault script asks a worker directly, past nginx."""
    return {i: path for i, (_, path) in _workers(supervisor).items()}


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a worker's Unix socket."""

    def __init__(self, socket_path: str | Path, timeout: float) -> None:
        super().__init__("worker", timeout=timeout)
        self.socket_path = str(socket_path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def ask_worker(socket_path: str | Path, method: str, path: str, token: str) -> int:
    """The HTTP status a worker answers to one bodiless request on its own socket, past nginx:
    how a test or a fault script finds which worker owns a token's session or episode."""
    connection = _UnixConnection(socket_path, timeout=30)
    try:
        connection.request(method, path, headers={"User-Token": token})
        return connection.getresponse().status
    finally:
        connection.close()


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _accepts_unix(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.settimeout(0.2)
            s.connect(str(path))
            return True
        except OSError:
            return False


def _wait_or_kill(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def run_front(front: Front) -> int:
    """Start `front` and supervise it until stopped: the command's exit code."""
    try:
        front.start()
    except FrontError as err:
        raise SystemExit(f"error: {err}") from None
    return front.supervise()


__all__ = ["Front", "FrontError", "find_nginx", "nginx_config", "run_front", "worker_processes"]

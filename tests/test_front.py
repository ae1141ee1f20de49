"""The class server (`python -m torch_student_env.server --workers N`): nginx in front of worker
processes routed by token, one shared score file, and what a kill -9 of one worker does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip("fastapi", reason="server tests need the [server] extra")

from torch_student_env.server import server_process  # noqa: E402
from torch_student_env.server.front import FrontError, ask_worker, find_nginx, nginx_config, worker_processes  # noqa: E402

try:
    NGINX = find_nginx()
except FrontError:
    NGINX = None
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="needs nginx (Debian: apt-get install nginx; .ci/run installs it)"
)
SEED_CLIENT = Path(__file__).resolve().parents[2] / "shared" / "seed" / "student_client_1.0.1"
API = "/api/v1"


@needs_nginx
def test_the_nginx_config_routes_by_token_with_no_failover_and_nginx_accepts_it(tmp_path):
    sockets = [tmp_path / "worker-0.sock", tmp_path / "worker-1.sock"]
    config = nginx_config(tmp_path, "127.0.0.1", 8123, sockets, max_body_bytes=1000)
    assert "hash $http_user_token consistent;" in config and "proxy_next_upstream off;" in config
    assert all(f"server unix:{s};" in config for s in sockets) and "max_fails" not in config
    assert "listen 127.0.0.1:8123" in config and "client_max_body_size 2000;" in config
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / kind).mkdir(parents=True)
    (tmp_path / "nginx.conf").write_text(config)
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


def test_workers_need_a_shared_score_file():
    run = subprocess.run(
        [sys.executable, "-m", "torch_student_env.server", "--workers", "2", "--db", ":memory:"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0 and "--workers needs a --db file" in run.stderr


class Student:
    """A token with one group of 2 engines, stepped through nginx; counts the episodes it saw end."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.headers, self.token = url, {"User-Token": token}, token
        self.acknowledged = 0
        self.start()

    def start(self) -> requests.Response:
        r = requests.post(f"{self.url}{API}/session/create", headers=self.headers, timeout=30)
        if r.status_code != 200:
            return r
        body = {"num_envs": 2, "env_config": {"step_size": 10}}
        sid = {"Session-ID": r.json()["session_id"]}
        r = requests.post(
            f"{self.url}{API}/vectorized/episodes/create", json=body, headers=self.headers | sid, timeout=30
        )
        self.ids = r.json()["episode_ids"]
        requests.post(f"{self.url}{API}/episode/vectorized_reset", json={"episode_ids": self.ids}, headers=self.headers)
        return r

    def step(self, action: int) -> requests.Response:
        body = {"episode_actions": [{"episode_id": e, "action": action} for e in self.ids]}
        r = requests.post(f"{self.url}{API}/episode/vectorized_step", json=body, headers=self.headers, timeout=30)
        if r.status_code == 200:
            self.acknowledged += sum(r.json()["terminateds"])  # a sale ends the episode: scored
        return r

    def scored(self) -> int:
        r = requests.get(f"{self.url}{API}/user/{self.token}/score", params={"limit": 1000}, headers=self.headers)
        return (r.json()["metrics"] or {}).get("total_episodes", 0)


_SEED_SCRIPT = """
import json, sys, time
import numpy as np
from student_client.student_gym_env_vectorized import create_student_gym_env_vectorized

env = create_student_gym_env_vectorized(num_envs=2)
env.reset()
env.step(np.zeros(2, dtype=int))
print("EPISODES", json.dumps(env.episode_ids), flush=True)
sys.stdin.readline()  # the test kills this token's worker
print("AFTER", json.dumps(env.step(np.zeros(2, dtype=int))[4]), flush=True)
deadline = time.monotonic() + 120
while True:  # start again, as a student would: a new env once the server answers
    try:
        env = create_student_gym_env_vectorized(num_envs=2)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
env.reset()
print("AGAIN", json.dumps(env.step(np.zeros(2, dtype=int))[4]), flush=True)
"""


@pytest.mark.slow  # nginx and two worker processes, one killed and restarted
@needs_nginx
@pytest.mark.skipif(not SEED_CLIENT.is_dir(), reason="needs ../shared/seed (the challenge's client 1.0.1)")
def test_kill_9_of_one_worker_its_clients_start_again_the_others_never_notice(tmp_path):
    pytest.importorskip("httpx", reason="the seed client needs httpx ([test] extra)")
    tokens = ["seed-student"] + [f"student-{k}" for k in range(8)]
    run_dir, db = tmp_path / "run", tmp_path / "scores.sqlite"
    with server_process(tokens, "--workers", "2", "--db", str(db), "--run-dir", str(run_dir)) as server:
        env = dict(os.environ, SERVER_URL=server.url, USER_TOKEN="seed-student", MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SEED_CLIENT), env.get("PYTHONPATH")]))
        seed = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_SEED_SCRIPT)], cwd=tmp_path, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            line = seed.stdout.readline()
            assert line.startswith("EPISODES"), line + seed.stderr.read()
            seed_episode = json.loads(line.split(" ", 1)[1])[0]
            students = [Student(server.url, t) for t in tokens[1:]]
            for action in (0, 2, 0, 2):  # sales end episodes: scored before they are acknowledged
                assert all(s.step(action).status_code == 200 for s in students)
            # which worker owns which token, asked past nginx on the workers' own sockets
            sockets = [run_dir / f"worker-{i}.sock" for i in (0, 1)]
            doomed = next(
                i for i in (0, 1) if ask_worker(sockets[i], "GET", f"{API}/episode/{seed_episode}", tokens[0]) == 200
            )
            owned = {
                s.token: ask_worker(sockets[doomed], "GET", f"{API}/episode/{s.ids[0]}", s.token) == 200
                for s in students
            }
            victims = [s for s in students if owned[s.token]]
            survivors = [s for s in students if not owned[s.token]]
            assert survivors, "every token hashed to one worker: pick other token names"
            steps_before = {s.token: s.step(0).json()["infos"][0]["step"] for s in survivors}

            os.kill(worker_processes(server.process.pid)[doomed], signal.SIGKILL)
            seed.stdin.write("\n")
            seed.stdin.flush()
            line = seed.stdout.readline()
            assert line.startswith("AFTER"), line + seed.stderr.read()
            errors = [info.get("error", "") for info in json.loads(line.split(" ", 1)[1])]
            # the seed client's error: its step reports it in every info (a 503 from nginx while the
            # worker restarts, or a 404 for the episodes of a session the restarted worker never had)
            assert all(("503" in e or "404" in e) for e in errors), errors
            for s in survivors:  # the other worker's tokens notice nothing: their episodes go on
                r = s.step(0)
                assert r.status_code == 200 and r.json()["infos"][0]["step"] == steps_before[s.token] + 10
            for s in victims:
                r = s.step(0)
                assert r.status_code in (503, 404) and "detail" in r.json()
            line = seed.stdout.readline()
            assert line.startswith("AGAIN") and "error" not in line, line + seed.stderr.read()
            deadline = time.monotonic() + 120
            for s in victims:  # they start again, on the restarted worker
                while s.start().status_code != 200:
                    assert time.monotonic() < deadline, "the killed worker never came back"
                    time.sleep(0.2)  # polling the restart, not timing anything
                assert s.step(0).status_code == 200
            assert seed.wait(timeout=60) == 0, seed.stderr.read()
            # nothing acknowledged is lost: every episode a student saw end was committed first
            for s in students:
                assert s.scored() == s.acknowledged > 0, s.token
            assert server.process.poll() is None  # the front itself never stopped
        finally:
            if seed.poll() is None:
                seed.kill()

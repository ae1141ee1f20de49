"""The challenge's HTTP protocol as a backend: ragged JSON rows in, the same fixed window out.

One keep-alive `requests.Session`. Idempotent requests (GETs, resets with counters, steps with
counters) and creates (whose orphans the server bounds) are retried with exponential backoff
and jitter on connection errors, timeouts, 429, 5xx and responses that are not JSON. Steps are
idempotent only against a server that advertises `step_counter` in `/api/v1/version` (our
reference server does). Against any other server a failed step raises `StepNotRetried`,
naming the episode ids, so the run can be resumed (`make_env(backend="remote",
episode_ids=..., session_id=...)`). Errors are never turned into fake terminations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from typing import Any

import numpy as np
import requests
import torch
import urllib3

from torch_student_env.client_settings import server_url_setting, user_token_setting
from torch_student_env.config import EnvConfig
from torch_student_env.spec import CLIENT_TIMEOUT_S, HEALTH_COLUMN, NUM_FEATURES, ROW_WIDTH
from torch_student_env.types import Transition

log = logging.getLogger(__name__)
DEFAULT_SERVER_URL = "http://localhost:8001"  # the seed client's configuration default


class RemoteError(RuntimeError):
    """Base class of the remote backend's errors; `status` is the HTTP status when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(RemoteError):
    """401: the server refused the token."""


class NotFoundError(RemoteError):
    """404: the session or an episode does not exist (expired, another token's, server restarted)."""


class RequestRejected(RemoteError):
    """Another 4xx: 409 over a limit or a counter mismatch, 413 too large, 422 validation, ... (the
    reference server's; another server may answer others)."""


class ServerUnavailable(RemoteError):
    """The server could not be reached or kept failing after every retry; `last` says how."""

    def __init__(self, message: str, status: int | None = None, last: str = "") -> None:
        super().__init__(message, status)
        self.last = last or message


class ProtocolError(RemoteError):
    """The server answered 200 with a body that does not follow the protocol (missing fields,
    wrong shapes): nothing is delivered, so no fake data reaches the env."""


class StepNotRetried(RemoteError):
    """A step failed against a server without step counters; retrying could step twice."""


_RETRY_STATUS = {429, 500, 502, 503, 504}


class HttpClient:
    """One server of the challenge protocol over HTTP: the URL and token (arguments, else
    `$SERVER_URL` / `$USER_TOKEN`: `client_settings`), keep-alive, and `request` with its
    retries, deadline, size cap and named errors. The remote backend steps through it, and
    `compat.get_leaderboard_score` asks for a score through it."""

    def __init__(
        self,
        server_url: str | None = None,
        user_token: str | None = None,
        timeout: float = CLIENT_TIMEOUT_S,
        max_retries: int = 4,
        backoff: float = 0.1,
    ) -> None:
        self.server_url = server_url_setting(server_url, DEFAULT_SERVER_URL).rstrip("/")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.http = requests.Session()
        self.http.headers.update({"User-Token": user_token_setting(user_token)})
        self._jitter = random.Random()

    def request(
        self, method: str, path: str, body: dict | None = None, *, idempotent: bool, headers: dict | None = None
    ) -> dict[str, Any]:
        """The JSON object the server answers; retried (with backoff) on a lost connection, a
        timeout or a 5xx when `idempotent`. Raises `AuthenticationError`, `NotFoundError`,
        `RequestRejected` for a 4xx, `ProtocolError` for a malformed answer, `ServerUnavailable`
        when every attempt failed (its `last` says how)."""
        attempts = self.max_retries + 1 if idempotent else 1
        last: str = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) + self._jitter.uniform(0, self.backoff))
            try:
                # `timeout` bounds the whole call, not each read: reads time out at a quarter of
                # it, and the body is read against the deadline, so a server that drips a byte at
                # a time cannot hold a step for longer than about 1.25 x timeout.
                deadline = time.monotonic() + self.timeout
                response = self.http.request(
                    method,
                    self.server_url + path,
                    json=body,
                    headers=headers,
                    timeout=(self.timeout, self.timeout / 4),
                    stream=True,
                )
                payload = _read_capped(response, deadline)
            except (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                TimeoutError,
            ) as err:  # connection, timeout, truncated body
                last = f"{type(err).__name__}: {err}"
                continue
            if response.status_code in _RETRY_STATUS:
                last = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code >= 400:
                raise _http_error(response, path)
            try:
                data = json.loads(payload)
            except ValueError:
                last = f"HTTP {response.status_code} with a body that is not JSON: {payload[:200]!r}"
                continue
            if not isinstance(data, dict):
                raise ProtocolError(f"{path}: the server answered {type(data).__name__}, not a JSON object")
            return data
        tries = f"after {attempts} attempts" if attempts > 1 else "(not retried: not idempotent)"
        raise ServerUnavailable(f"{method} {self.server_url}{path} failed {tries}: {last}", last=last)

    def close(self) -> None:
        """Close the connection."""
        self.http.close()


class RemoteBackend:
    """N engines on a server of the challenge protocol (see docs/protocol.md)."""

    kernel = None  # no pure kernel: the env calls `transition`, one HTTP request per step
    restart_kernel = None
    sim = None

    def __init__(
        self,
        config: EnvConfig,
        server_url: str | None = None,
        user_token: str | None = None,
        timeout: float = CLIENT_TIMEOUT_S,
        max_retries: int = 4,
        backoff: float = 0.1,
        episode_ids: list[str] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.num_envs = config.num_envs
        self.device = config.device
        self.max_steps_per_episode = config.max_steps_per_episode
        self.client = HttpClient(server_url, user_token, timeout, max_retries, backoff)
        self.server_url = self.client.server_url

        version = self._request("GET", "/api/v1/version", idempotent=True)
        self.features = set(version.get("features", []))
        self.retry_steps = "step_counter" in self.features
        if not self.retry_steps:
            log.warning("server %s has no step counters: failed steps will raise instead of retrying", self.server_url)
        # A session this backend opened is released by close(); one it was given is the caller's.
        self._owns_session = session_id is None
        # Creates are retried although a retry may leave an orphan behind (a session whose answer
        # was lost, or a group in our session): orphans are bounded by the server's per-token
        # limits and released with the session or by its TTL, while a transient 503 at start-up
        # would otherwise end a training run before its first step.
        self.session_id = session_id or self._request("POST", "/api/v1/session/create", idempotent=True)["session_id"]
        if episode_ids is None:
            body = {
                "num_envs": self.num_envs,
                # The env owns resets (it resets ended engines itself): no server-side auto-reset.
                "env_config": {
                    "max_steps_per_episode": self.max_steps_per_episode,
                    "step_size": config.step_size,
                    "auto_reset": False,
                },
            }
            created = self._request("POST", "/api/v1/vectorized/episodes/create", body, idempotent=True, session=True)
            episode_ids = created["episode_ids"]
            self._counters = np.zeros((2, self.num_envs), dtype=np.int64)  # step, reset counters
        else:
            if len(episode_ids) != self.num_envs:
                raise ValueError(f"episode_ids has {len(episode_ids)} ids for num_envs={self.num_envs}")
            infos = [self._request("GET", f"/api/v1/episode/{e}", idempotent=True) for e in episode_ids]
            self._counters = np.array(
                [[i.get("step_counter", 0) for i in infos], [i.get("reset_counter", 0) for i in infos]]
            )
        self.episode_ids = list(episode_ids)
        self._seed: int | None = config.seed
        self.env_offset = config.env_offset
        self._engine_seeds: dict[int, tuple[int, int]] = {}  # engine -> (seed, env index), next reset
        self._flights = np.zeros(self.num_envs, dtype=np.int64)
        self._health: dict[str, torch.Tensor] = {}

    # -- HTTP ---------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        *,
        idempotent: bool,
        session: bool = False,
        what: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Session-ID": self.session_id} if session else None
        try:
            return self.client.request(method, path, body, idempotent=idempotent, headers=headers)
        except ServerUnavailable as err:
            if idempotent or what is None:
                raise
            raise StepNotRetried(
                f"{what} failed ({err.last}) and the server offers no step counters, so it was not retried: "
                f"the engines may or may not have advanced. Resume with make_env(backend='remote', "
                f"session_id={self.session_id!r}, episode_ids=...) for episodes {self.episode_ids}"
            ) from None

    # -- Backend protocol ---------------------------------------------------------------------
    def kernel_constants(self) -> tuple:
        """Nothing: there is no kernel to compile."""
        return ()

    def seed(self, seed: int) -> None:
        """The next reset re-keys every engine i as engine i of `seed` on the server."""
        self._seed = seed
        self._engine_seeds.clear()

    def seed_engines(self, mask: torch.Tensor, seeds: torch.Tensor, env_indices: torch.Tensor) -> None:
        """The next reset of each masked engine re-keys it as engine `env_indices[i]` of `seeds[i]`."""
        for i in np.flatnonzero(mask.cpu().numpy()):
            self._engine_seeds[int(i)] = (int(seeds[i]), int(env_indices[i]))

    def reset(self, mask: torch.Tensor | None) -> torch.Tensor:
        """Reset the masked episodes on the server (one request); first rows (N, 10)."""
        index = np.arange(self.num_envs) if mask is None else np.flatnonzero(mask.cpu().numpy())
        rows = torch.zeros(self.num_envs, ROW_WIDTH)
        if len(index) == 0:
            return rows.to(self.device)
        body: dict[str, Any] = {"episode_ids": [self.episode_ids[i] for i in index]}
        if self._seed is not None and mask is None:
            self._engine_seeds = {int(i): (self._seed, self.env_offset + int(i)) for i in index}
            self._seed = None
        if any(int(i) in self._engine_seeds for i in index):
            keyed = [self._engine_seeds.get(int(i)) for i in index]
            body["seeds"] = [k[0] if k else None for k in keyed]
            body["env_indices"] = [k[1] if k else 0 for k in keyed]
        counters = self._counters[1, index] + 1
        if "reset_counter" in self.features:
            body["reset_counters"] = counters.tolist()
        data = self._request(
            "POST",
            "/api/v1/episode/vectorized_reset",
            body,
            idempotent="reset_counter" in self.features,
            what="vectorized reset",
        )
        self._counters[1, index] = counters
        for i in index:
            self._engine_seeds.pop(int(i), None)
        self._flights[index] = 0
        with _protocol("vectorized_reset"):
            rows[index, :NUM_FEATURES] = torch.tensor(data["observations"], dtype=torch.float32)
            self._read_health(index, data["infos"], rows[:, None, HEALTH_COLUMN], [1] * len(index))
        return rows.to(self.device)

    def transition(
        self, actions: torch.Tensor, active: torch.Tensor, step_size: int, reset_ended: bool
    ) -> tuple[Transition, torch.Tensor | None]:
        """One vectorized step request that also restarts the ended engines (`reset_ended`), on a
        server with `step_resets`; elsewhere a step request, then a reset request."""
        if reset_ended and "step_resets" not in self.features:
            transition, _ = self._step_request(actions, active, step_size, reset_ended=False)
            return transition, self.reset(transition.ended(active))
        return self._step_request(actions, active, step_size, reset_ended)

    def _step_request(
        self, actions: torch.Tensor, active: torch.Tensor, step_size: int, reset_ended: bool
    ) -> tuple[Transition, torch.Tensor | None]:
        """The step request; with `reset_ended`, the server also starts the next episode of every
        engine that ended, in the same request (`reset_if_done`), and the first rows come back
        with the step: the step and its auto-reset are one exactly-once unit."""
        n = self.num_envs
        acts, index = actions.cpu().numpy(), np.flatnonzero(active.cpu().numpy())
        counters = self._counters[0, index] + 1
        episode_actions = self._episode_actions(index, acts, counters, step_size, reset_ended)
        rows = torch.zeros(n, step_size, ROW_WIDTH)
        flown = np.zeros((n, step_size), dtype=bool)
        reward = np.zeros(n, dtype=np.float32)
        flags = np.zeros((3, n), dtype=bool)  # terminated, truncated, failed
        before = self._flights.copy()
        first_rows = torch.zeros(n, ROW_WIDTH) if reset_ended else None
        if len(index):
            data = self._request(
                "POST",
                "/api/v1/episode/vectorized_step",
                {"episode_actions": episode_actions},
                idempotent=self.retry_steps,
                what="vectorized step",
            )
            self._counters[0, index] = counters
            with _protocol("vectorized_step"):
                lengths = np.zeros(len(index), dtype=int)
                for j, i in enumerate(index):
                    obs = data["observations"][j]
                    k = len(obs)
                    if k > step_size:
                        raise ProtocolError(
                            f"server returned {k} rows for episode {self.episode_ids[i]}, asked for {step_size}"
                        )
                    if k:
                        rows[i, :k, :NUM_FEATURES] = torch.tensor(obs, dtype=torch.float32)
                    flown[i, :k] = True
                    lengths[j] = k
                    info = data["infos"][j]
                    reward[i] = data["rewards"][j]
                    flags[:, i] = data["terminateds"][j], data["truncateds"][j], info.get("failed", False)
                    self._flights[i] = info.get("step", self._flights[i] + k)
                self._read_health(index, data["infos"], rows[:, :, HEALTH_COLUMN], lengths.tolist())
        flights_after = self._flights.copy()  # what the ended episodes flew, before their reset
        if len(index) and reset_ended:
            self._read_resets(index, data, first_rows)
        row_flight = torch.as_tensor(before)[:, None] + torch.arange(1, step_size + 1)
        to = dict(device=self.device)
        transition = Transition(
            rows=rows.to(**to),
            row_flown=torch.as_tensor(flown, **to),
            row_flight=row_flight.to(**to),
            reward=torch.as_tensor(reward, **to),
            terminated=torch.as_tensor(flags[0], **to),
            truncated=torch.as_tensor(flags[1], **to),
            failed=torch.as_tensor(flags[2], **to),
            flights=torch.as_tensor(flights_after, **to),
        )
        return transition, None if first_rows is None else first_rows.to(**to)

    def _episode_actions(
        self, index: np.ndarray, acts: np.ndarray, counters: np.ndarray, step_size: int, reset_ended: bool
    ) -> list[dict[str, Any]]:
        """The step request's `episode_actions`: one entry per engine in `index`, with its step
        counter (exactly-once retries) when the server keeps them."""
        episode_actions = []
        for i, c in zip(index, counters, strict=True):
            entry = {
                "episode_id": self.episode_ids[i],
                "action": int(acts[i]),
                "step_size": step_size,
                "return_all_states": True,
            }
            if self.retry_steps:
                entry["step_counter"] = int(c)
            if reset_ended:
                entry["reset_if_done"] = True
            episode_actions.append(entry)
        return episode_actions

    def _read_resets(self, index: np.ndarray, data: dict, first_rows: torch.Tensor) -> None:
        """The first rows of the episodes the server restarted within the step (`resets`)."""
        resets = data.get("resets")
        if not isinstance(resets, list) or len(resets) != len(index):
            raise ProtocolError(f"vectorized_step answered no 'resets' list for {len(index)} episodes")
        restarted = [(j, int(i)) for j, i in enumerate(index) if resets[j] is not None]
        for j, i in restarted:
            first_rows[i, :NUM_FEATURES] = torch.tensor(resets[j]["observation"], dtype=torch.float32)
            self._flights[i] = 0
            self._counters[1, i] += 1  # the server counted this reset too
        if restarted:
            js, ids = zip(*restarted, strict=True)
            self._read_health(
                np.array(ids), [resets[j]["info"] for j in js], first_rows[:, None, HEALTH_COLUMN], [1] * len(js)
            )

    def _read_health(
        self, index: np.ndarray, infos: list[dict], health_column: torch.Tensor, lengths: list[int]
    ) -> None:
        """Hidden health from infos, when the server sends it (prod=False servers, ours).

        `health_column` is a (N, K) view of the rows' health column; `lengths[j]` rows are real.
        """
        if not infos or "health" not in infos[0]:
            return
        if not self._health:
            self._health = {
                "health": torch.zeros(self.num_envs),
                "wear_rate": torch.zeros(self.num_envs),
            }
        for j, i in enumerate(index):
            info = infos[j]
            self._health["health"][i] = info["health"]
            self._health["wear_rate"][i] = info.get("wear_rate", 0.0)
            rows_health = info.get("health_rows", [])[: lengths[j]]
            if rows_health:
                health_column[i, : len(rows_health)] = torch.tensor(rows_health)

    def privileged(self) -> dict[str, torch.Tensor]:
        """Hidden health as last reported by the server (empty if it reports none)."""
        return {k: v.to(self.device).clone() for k, v in self._health.items()}

    def state_dict(self) -> dict[str, Any]:
        """Ids and counters: enough to reattach to the server's episodes, not to rewind them."""
        return {
            "server_url": self.server_url,
            "session_id": self.session_id,
            "episode_ids": list(self.episode_ids),
            "counters": torch.as_tensor(self._counters.copy()),
            "flights": torch.as_tensor(self._flights.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reattach only to the same episodes at the same point: a server cannot be rewound."""
        if state["episode_ids"] != self.episode_ids:
            raise ValueError("this checkpoint belongs to other remote episodes; build the env with their episode_ids")
        if not np.array_equal(state["counters"].numpy(), self._counters):
            raise NotImplementedError("a remote episode cannot be rewound to an earlier step; the server has moved on")

    def close(self) -> None:
        """Release the session this backend opened (its episodes with it), then the connection.

        A session given to the constructor is left open: it is the caller's. Idempotent; a
        server that cannot be reached is logged, not raised, since there is nothing left to lose.
        """
        if self._owns_session and "session_delete" in self.features:
            try:
                url = f"{self.server_url}/api/v1/session/{self.session_id}"
                response = self.client.http.delete(url, timeout=self.client.timeout)
                if response.status_code not in (200, 404):  # 404: already expired or released
                    log.warning("releasing session %s: HTTP %s", self.session_id, response.status_code)
            except requests.RequestException as err:
                log.warning("could not release session %s: %s", self.session_id, err)
        self._owns_session = False
        self.client.close()


MAX_RESPONSE_BYTES = 64 << 20  # the largest legitimate answer (4,096 episodes x 50 rows) is ~20 MB


@contextlib.contextmanager
def _protocol(what: str):
    """Turn a malformed answer (missing field, wrong shape or type) into a named ProtocolError."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, RemoteError):
            raise
        raise ProtocolError(
            f"{what}: the server's answer does not follow the protocol ({type(err).__name__}: {err})"
        ) from err


def _read_capped(response: requests.Response, deadline: float) -> bytes:
    """The body, read against `deadline` and capped at MAX_RESPONSE_BYTES while it streams in.

    `read1` returns after one socket read, so a server that drips a byte at a time is checked
    against the deadline at every byte instead of filling a 64 kB chunk (urllib3 >= 2).
    """
    raw, chunks, size = response.raw, [], 0
    read = raw.read1 if hasattr(raw, "read1") else raw.read
    while True:
        chunk = read(65536, decode_content=True)
        if not chunk:
            break
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            raise ProtocolError(f"the server's answer exceeds {MAX_RESPONSE_BYTES} bytes")
        if time.monotonic() > deadline:
            response.close()
            raise TimeoutError("the server's answer did not arrive within the timeout")
        chunks.append(chunk)
    response._content = body = b"".join(chunks)  # so that response.json() / .text still work
    return body


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", response.text[:200]))
    except ValueError:
        return response.text[:200]


def _http_error(response: requests.Response, path: str) -> RemoteError:
    status, detail = response.status_code, _detail(response)
    message = f"{path}: HTTP {status}: {detail}"
    if status == 401:
        return AuthenticationError(f"{message} (check user_token / $USER_TOKEN)", status)
    if status == 404:
        return NotFoundError(f"{message} (expired, another token's, or the server restarted)", status)
    return RequestRejected(message, status)

"""The server's OpenAPI schema is true: schemathesis drives the live server from it.

Every check of schemathesis runs: every answer is documented (status, content type, body
schema), no input causes a 5xx, and no request the schema calls valid is refused as invalid.
The two rules JSON Schema cannot state (a reset's lists of other lengths than its episode ids,
an episode listed twice in one step) answer 409, which the schema documents, with their
message. `SCHEMA_EXAMPLES` examples per operation and mode (50 by default).
"""

from __future__ import annotations

import os
import zlib
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schema tests need the [test] extra")
pytest.importorskip("fastapi", reason="schema tests need the [server] extra")

from helpers import TOKEN_A  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from torch_student_env.server import Limits, running_server  # noqa: E402

pytestmark = pytest.mark.slow  # schema fuzzing over every operation

EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "50"))
SEEN: Counter = Counter()  # (mode, status) -> requests, printed at the end (pytest -s) for the docs


@pytest.fixture(scope="module")
def live():
    """A server with one session of real episodes, so that generated requests reach the engines."""
    import requests

    with running_server(
        tokens={TOKEN_A}, limits=Limits(max_envs_per_token=1 << 20, max_sessions_per_token=1 << 20)
    ) as url:
        headers = {"User-Token": TOKEN_A}
        sid = requests.post(f"{url}/api/v1/session/create", headers=headers, timeout=10).json()["session_id"]
        body = {"num_envs": 4, "env_config": {"max_steps_per_episode": 60}}
        created = requests.post(
            f"{url}/api/v1/vectorized/episodes/create", headers=headers | {"Session-ID": sid}, json=body, timeout=10
        )
        ids = created.json()["episode_ids"]
        requests.post(f"{url}/api/v1/episode/vectorized_reset", headers=headers, json={"episode_ids": ids}, timeout=10)
        yield {"url": url, "session": sid, "ids": ids}


def _real(value: str, ids: list[str]) -> str:
    """A generated id, swapped (deterministically, most of the time) for a real episode's id."""
    k = zlib.crc32(value.encode("utf-8", "surrogatepass")) % (len(ids) + 1)
    return ids[k] if k < len(ids) else value


def _reach_real_episodes(case, live) -> None:
    """Point a generated request at real episodes and the real session; it stays schema-valid."""
    body, ids = case.body, live["ids"]
    if isinstance(body, dict):
        if isinstance(body.get("episode_id"), str):
            body["episode_id"] = _real(body["episode_id"], ids)
        if isinstance(body.get("episode_ids"), list) and all(isinstance(e, str) for e in body["episode_ids"]):
            # distinct ids stay distinct (the schema's uniqueItems); list lengths are left as generated
            real = [_real(e, ids) for e in body["episode_ids"]]
            if len(set(real)) == len(real):
                body["episode_ids"] = real
        actions = body.get("episode_actions")
        if isinstance(actions, list) and all(
            isinstance(a, dict) and isinstance(a.get("episode_id"), str) for a in actions
        ):
            for action in actions:  # repeats are left in: the server answers them 409, as documented
                action["episode_id"] = _real(action["episode_id"], ids)
    path = case.path_parameters or {}
    if isinstance(path.get("episode_id"), str):
        path["episode_id"] = _real(path["episode_id"], ids)
    if isinstance(path.get("user_token"), str):
        path["user_token"] = _real(path["user_token"], [TOKEN_A])
    if (
        case.headers is not None
        and "Session-ID" in case.headers
        and case.headers["Session-ID"]
        and hash(case.headers["Session-ID"]) % 2
    ):
        case.headers["Session-ID"] = live["session"]


def _check(case, live) -> None:
    """Call the live server with one generated request and hold the answer to the schema."""
    if case.meta.generation.mode == GenerationMode.POSITIVE:
        _reach_real_episodes(case, live)
    headers = {"User-Token": TOKEN_A}
    response = case.call(base_url=live["url"], headers=headers, timeout=30)
    SEEN[(case.meta.generation.mode.value, response.status_code)] += 1
    assert response.status_code < 500, response.text
    case.validate_response(response, headers=headers)  # every check, positive_data_acceptance too


def test_the_server_answers_as_its_schema_says(live):
    """Every operation, positive and negative requests (hypothesis strategies from the schema;
    not schemathesis's pytest plugin, which follows pytest's internals)."""
    schema = schemathesis.openapi.from_url(live["url"] + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 13
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                _check(case, live)

            try:
                run()
            except Unsatisfiable:  # nothing to negate (an operation without parameters)
                assert mode == GenerationMode.NEGATIVE, operation.label
            except Exception as err:  # name the operation whose request failed
                raise AssertionError(f"{operation.label} ({mode.value}): {err}") from err
    print("schemathesis requests by (mode, status):", dict(sorted(SEEN.items())), "total", sum(SEEN.values()))

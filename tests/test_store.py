"""The score database: what it keeps, across restarts, and the files it refuses at start-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from torch_student_env.leaderboard import FinishedEpisode, score_metrics
from torch_student_env.server.state import Limits, ServerError, ServerState
from torch_student_env.server.store import ScoreStore, StoreError, integrity


def _episode(reward: float, flights: int = 100, failed: bool = False) -> FinishedEpisode:
    return FinishedEpisode(reward, 1, flights, failed, "2026-12-04T12:00:00+00:00")


def test_episodes_are_kept_in_order_per_token_and_trimmed_to_the_newest(tmp_path):
    store = ScoreStore(tmp_path / "s.sqlite", keep_per_token=5)
    store.record("a", [_episode(r) for r in range(8)])
    store.record("b", [_episode(-1.0, failed=True)])
    assert [e.total_reward for e in store.last("a", 100)] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [e.total_reward for e in store.last("a", 2)] == [6.0, 7.0]
    assert store.tokens() == ["a", "b"] and store.count() == 6
    assert store.last("b", 10)[0].failed and store.last("nobody", 10) == []


def test_a_restart_on_the_same_file_serves_the_same_scores(tmp_path):
    path = tmp_path / "s.sqlite"
    state = ServerState(store=ScoreStore(path))
    session = state.create_session("t")
    ids = state.create_group("t", session, 3, 1000, True).episode_ids
    state.reset("t", ids, [None] * 3, None, None)
    state.step("t", [{"episode_id": e, "action": 2, "step_size": 10} for e in ids])  # three sales
    before = state.score("t")
    state.store.set_names({"t": "Ada"})
    state.store.close()
    again = ServerState(store=ScoreStore(path))  # a new process would see the same
    assert again.score("t") == before and before["total_episodes"] == 3
    assert before["total_reward"] == pytest.approx(450.0) and again.store.names() == {"t": "Ada"}
    assert integrity(path) == "ok"


def test_a_failed_commit_is_not_acknowledged(tmp_path):
    """If the database refuses the write, the step answers 503 naming the cause: no answer
    reports an episode the database does not hold."""
    state = ServerState(Limits(), store=ScoreStore(tmp_path / "s.sqlite"))
    session = state.create_session("t")
    ids = state.create_group("t", session, 2, 1000, True).episode_ids
    state.reset("t", ids, [None, None], None, None)
    state.store._db.close()  # the file is gone from under the server (any sqlite3 error)
    with pytest.raises(ServerError) as err:
        state.step("t", [{"episode_id": e, "action": 2, "step_size": 10} for e in ids])
    assert err.value.status == 503 and "2 episodes that could not be saved" in err.value.detail


def test_corrupt_files_are_refused_at_start_up(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 300)
    with pytest.raises(StoreError, match="not an SQLite database"):
        ScoreStore(garbage)
    damaged = tmp_path / "damaged.sqlite"
    store = ScoreStore(damaged)
    store.record("a", [_episode(r) for r in range(2000)])
    store.close()
    data = bytearray(damaged.read_bytes())
    data[4096 * 2 : 4096 * 3] = b"\xff" * 4096  # one page of the table overwritten
    damaged.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt|malformed") as err:
        ScoreStore(damaged)
    assert str(damaged) in str(err.value)


def test_a_missing_folder_or_a_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        ScoreStore(tmp_path / "nope" / "s.sqlite")
    with pytest.raises(StoreError, match="is a directory"):
        ScoreStore(tmp_path)


def _in_subprocess(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def _opening(path: Path, preamble: str) -> subprocess.CompletedProcess:
    """Open a `ScoreStore` on `path` in a fresh process after `preamble` (which may drop rights or
    limit file sizes; the store module is imported first); prints "refused: <why>" or "accepted"."""
    lines = [
        "from torch_student_env.server.store import ScoreStore, StoreError",
        *textwrap.dedent(preamble).strip().splitlines(),
        "try:",
        f"    ScoreStore({str(path)!r})",
        "except StoreError as err:",
        "    print('refused:', err)",
        "else:",
        "    print('accepted')",
    ]
    return _in_subprocess("\n".join(lines))


@pytest.mark.slow  # a subprocess or a browser
def test_a_read_only_file_is_refused_at_start_up_not_at_the_first_score(tmp_path):
    """The server's user cannot write the file (as root, the check runs as `nobody`, since root
    writes read-only files)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="ro-store-", dir="/tmp"))  # a folder `nobody` can enter
    path = folder / "ro.sqlite"
    ScoreStore(path).close()
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        run = _opening(
            path,
            """
            import os
            if os.geteuid() == 0:
                os.setgid(65534); os.setuid(65534)
        """,
        )
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
    assert run.stdout.startswith("refused:") and "read-only" in run.stdout, run.stdout + run.stderr
    assert str(path) in run.stdout


@pytest.mark.slow  # a subprocess or a browser
def test_a_full_disk_is_refused_at_start_up_and_a_later_full_disk_answers_503(tmp_path):
    """A disk that is full is simulated with a file-size limit (RLIMIT_FSIZE: writes past it fail
    as on a full disk)."""
    path = tmp_path / "full.sqlite"
    run = _opening(
        path,
        """
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    """,
    )
    assert run.stdout.startswith("refused:") and "full" in run.stdout, run.stdout + run.stderr
    later = tmp_path / "later.sqlite"
    run = _in_subprocess(f"""
        import os, resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from torch_student_env.leaderboard import FinishedEpisode
        from torch_student_env.server.store import ScoreStore, StoreError
        store = ScoreStore({str(later)!r})
        size = max(os.path.getsize(p) for p in ({str(later)!r}, {str(later)!r} + "-wal"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        try:
            for k in range(10_000):  # 100 a commit: the file grows past the limit within a few
                store.record("t", [FinishedEpisode(1.0, 0, 10, False, "2026-12-04T00:00:00+00:00")] * 100)
        except StoreError as err:
            print("refused after", k, ":", err)
    """)
    assert run.stdout.startswith("refused after") and "full" in run.stdout, run.stdout + run.stderr


def test_scores_from_the_store_are_the_challenge_metrics(tmp_path):
    store = ScoreStore(tmp_path / "s.sqlite")
    episodes = [_episode(float(r), flights=10 + r, failed=r % 3 == 0) for r in range(150)]
    store.record("a", episodes)
    assert score_metrics(store.last("a", 100), 100) == score_metrics(episodes, 100)

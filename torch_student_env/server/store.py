"""What the reference server must never lose: finished episodes and display names, in SQLite.

Standard-library `sqlite3`, in WAL mode: one writer (a lock; every write is one short
transaction committed before the answer that acknowledges it leaves the server). A finished
episode is recorded, and committed, before the step answer that reports it is sent; episodes in
flight live in memory and are lost with the process.

Durability: by default `synchronous=NORMAL`, which in WAL mode keeps every committed
transaction through a crash of the server process (`kill -9`, out of memory, a bug) and never
corrupts the file, but may roll back the last commits if the whole machine loses power or the
OS crashes (SQLite's documentation of PRAGMA synchronous). `durable=True` (`--durable`) uses
`synchronous=FULL`: one fsync per commit, which keeps them through a power cut too, at a cost
measured in docs/reliability.md.

Start-up refuses, with a `StoreError` naming the file and the cause, any file it cannot keep
writing to: not a database, corrupt (`PRAGMA quick_check`), read-only, or on a full disk (a
probe write at start-up). The server never falls back to memory on its own; `":memory:"` is for
tests.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from torch_student_env.leaderboard import FinishedEpisode
from torch_student_env.spec import EPISODES_KEPT_PER_TOKEN

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS players (token TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL,
    total_reward REAL NOT NULL,
    repairs INTEGER NOT NULL,
    flights INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_by_token ON episodes (token, id);
"""


class StoreError(RuntimeError):
    """The score database cannot be used: the message names the file and the cause."""


class ScoreStore:
    """Finished episodes per token (the newest `keep_per_token`) and the token -> name table.

    Thread-safe: writes take one lock (SQLite has one writer anyway), reads run on the same
    connection under it too, since a `sqlite3.Connection` must not be used by two threads at
    once. Every method is one bounded transaction.
    """

    def __init__(
        self, path: str | Path = ":memory:", keep_per_token: int = EPISODES_KEPT_PER_TOKEN, durable: bool = False
    ) -> None:
        self.path = str(path)
        self.keep_per_token = keep_per_token
        self.durable = durable
        self._lock = threading.Lock()
        self._db = self._open(self.path)

    # -- start-up -------------------------------------------------------------------------------
    def _open(self, path: str) -> sqlite3.Connection:
        where = "an in-memory database" if path == ":memory:" else f"score database {path}"
        if path != ":memory:":
            file = Path(path)
            try:
                if file.is_dir():
                    raise StoreError(f"{where} is a directory")
                if not file.parent.is_dir():
                    raise StoreError(f"{where}: its folder {file.parent} does not exist")
            except OSError as err:  # a folder this user cannot enter
                raise StoreError(f"cannot reach {where}: {err.strerror}") from err
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open {where}: {err}") from err
        try:
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise StoreError(f"{where} is corrupt (PRAGMA quick_check: {ok})")
            if path != ":memory:":
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StoreError(f"{where} cannot use WAL mode (got {mode!r}): is its folder writable?")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            db.executescript(_SCHEMA)
            # The probe write: a read-only file or a full disk is refused now, not at the first
            # finished episode, whose answer would then have to fail.
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            db.execute("COMMIT")
        except StoreError:
            db.close()
            raise
        except sqlite3.DatabaseError as err:
            db.close()
            raise StoreError(f"cannot use {where}: {_cause(err)}") from err
        return db

    # -- writes ---------------------------------------------------------------------------------
    def record(self, token: str, episodes: list[FinishedEpisode]) -> None:
        """Commit the token's finished episodes, in one transaction, and trim its oldest past
        `keep_per_token`.

        Raises `StoreError` if the commit fails (disk full, file gone read-only): the caller must
        then not acknowledge these episodes.
        """
        insert = (
            "INSERT INTO episodes (token, total_reward, repairs, flights, failed, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        trim = (
            "DELETE FROM episodes WHERE token = ? AND id <= "
            "(SELECT id FROM episodes WHERE token = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
        )
        rows = [(token, e.total_reward, e.repairs, e.flights, int(e.failed), e.finished_at) for e in episodes]
        self._write([(insert, row) for row in rows] + [(trim, (token, token, self.keep_per_token))])

    def set_names(self, names: dict[str, str]) -> None:
        """Store token -> display name (the tokens the server accepts now)."""
        self._write([("INSERT OR REPLACE INTO players (token, name) VALUES (?, ?)", pair) for pair in names.items()])

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                with contextlib.suppress(sqlite3.Error):  # the connection itself may be what failed
                    self._db.execute("ROLLBACK")
                raise StoreError(f"score database {self.path}: {_cause(err)}") from err

    # -- reads ----------------------------------------------------------------------------------
    def last(self, token: str, limit: int) -> list[FinishedEpisode]:
        """The token's last `limit` finished episodes, oldest first (the order they finished)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT total_reward, repairs, flights, failed, finished_at FROM episodes "
                "WHERE token = ? ORDER BY id DESC LIMIT ?",
                (token, limit),
            ).fetchall()
        return [FinishedEpisode(r, p, f, bool(x), t) for r, p, f, x, t in reversed(rows)]

    def tokens(self) -> list[str]:
        """The tokens with at least one finished episode."""
        with self._lock:
            return [t for (t,) in self._db.execute("SELECT DISTINCT token FROM episodes ORDER BY token")]

    def names(self) -> dict[str, str]:
        """token -> display name, as stored."""
        with self._lock:
            return dict(self._db.execute("SELECT token, name FROM players"))

    def count(self) -> int:
        """Finished episodes stored, all tokens together."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        with self._lock:
            self._db.close()


def integrity(path: str | Path) -> str:
    """`PRAGMA integrity_check` of a database file: "ok" when sound."""
    db = sqlite3.connect(str(path))
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def _cause(err: sqlite3.Error) -> str:
    """SQLite's message, with what it means for a server operator."""
    text = str(err)
    hints = {
        "readonly": "the file (or its folder, which holds the WAL) is read-only",
        "disk is full": "the disk is full",
        "disk I/O error": "the disk is full or failing",
        "not a database": "the file is not an SQLite database",
        "malformed": "the file is corrupt",
    }
    for needle, hint in hints.items():
        if needle in text:
            return f"{text} ({hint})"
    return text

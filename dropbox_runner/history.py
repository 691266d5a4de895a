"""The submitter's memory: job transitions, input digests and the cache index, in SQLite.

The dropbox files stay the truth that tools see; this store only remembers what they
cannot say cheaply (when each state began, which runner, digests of unchanged inputs), so
``list`` answers from an index instead of reading ten thousand result files.  If it is
lost it is rebuilt from the dropbox (``rebuild``), minus the timestamps of the past.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import yaml

from .entries import UnusableEntry, load_bounded_yaml, read_regular
from .on_hpc.protocol import JobState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, job_id TEXT, state TEXT NOT NULL, status TEXT, message TEXT,
    class TEXT, runner TEXT, attempts INTEGER, first_seen REAL, updated_at REAL);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, updated_at);
CREATE TABLE IF NOT EXISTS transitions (
    name TEXT NOT NULL, job_id TEXT, state TEXT NOT NULL, at REAL NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS transitions_by_name ON transitions (name, at);
CREATE TABLE IF NOT EXISTS file_digests (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, created_at REAL, last_used REAL);
CREATE TABLE IF NOT EXISTS earlier_runs (name TEXT NOT NULL, block TEXT NOT NULL, at REAL);
"""
# A transition as recorded: its transitions row, the jobs row's upsert and that upsert's values.
Transition = tuple[tuple[Any, ...], str, tuple[Any, ...]]
DIGEST_CHUNK = 1 << 20
LOCK_WAIT_SECONDS = 30
log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _upsert(columns: tuple[str, ...]) -> str:
    """A job's row, inserted or updated in the given columns: the statement's text made
    once for each set of columns (a burst records three or four transitions a job)."""
    assignments = ", ".join(f"{key} = excluded.{key}" for key in columns)
    return (f"INSERT INTO jobs (name, first_seen, {', '.join(columns)}) "
            f"VALUES (?, ?{', ?' * len(columns)}) ON CONFLICT(name) DO UPDATE SET {assignments}")


@dataclass
class JobRow:
    name: str
    job_id: str | None
    state: str
    status: str | None
    message: str | None
    job_class: str | None
    runner: str | None
    attempts: int | None
    first_seen: float | None
    updated_at: float | None


class History:
    """The store; ``dropbox`` given, a corrupt database is moved aside and rebuilt from it.

    A database locked by another process is waited for (``LOCK_WAIT_SECONDS``, SQLite's
    busy timeout) before the cycle gives up and tries again at the next one."""

    def __init__(self, path: Path, dropbox: Path | None = None):
        self._pending: list[Transition] | None = None     # a batch's transitions, not yet written
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = self._open(path)
        except sqlite3.DatabaseError as error:
            if dropbox is None or not _is_corrupt(error):
                raise
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(f"{path}{suffix}", f"{aside}{suffix}")
                except FileNotFoundError:
                    pass
            self.db = self._open(path)
            rows = self.rebuild(dropbox)
            log.warning("%s was corrupt (%s): moved aside to %s and rebuilt from the dropbox (%d jobs); "
                        "timestamps and input digests before now are lost", path, error, aside.name, rows)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=LOCK_WAIT_SECONDS, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.execute("SELECT COUNT(*) FROM jobs").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for a cycle's many small writes; its transitions are written
        together at its end (``executemany``, in the order recorded)."""
        self.db.execute("BEGIN")
        self._pending = []
        try:
            yield
            self._flush()
        except BaseException:
            self._pending = None
            self.db.execute("ROLLBACK")
            raise
        self._pending = None
        self.db.execute("COMMIT")

    # -- transitions --------------------------------------------------------------------
    def record(self, name: str, state: str, job_id: str | None = None, detail: str | None = None,
               **fields: Any) -> None:
        now = time.time()
        columns = {"job_id": job_id, "state": state, "updated_at": now, **fields}
        columns = {key: value for key, value in columns.items() if value is not None}
        transition = ((name, job_id, state, now, detail), _upsert(tuple(columns)), (name, now, *columns.values()))
        if self._pending is None:
            self._write_transitions([transition])
        else:
            self._pending.append(transition)

    def _flush(self) -> None:
        """Write what this batch recorded so far (before anything reads the jobs back)."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._write_transitions(pending)

    def _write_transitions(self, transitions: list[Transition]) -> None:
        """Each statement runs once over its run of rows: a burst's rows share a few
        statements, and one ``execute`` a row cost a third of what SQLite spent."""
        self.db.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?)", [row for row, _, _ in transitions])
        for statement, run in itertools.groupby(transitions, key=lambda transition: transition[1]):
            self.db.executemany(statement, [values for _, _, values in run])

    def names_with_earlier_runs(self) -> set[str]:
        """Almost always none: a result then asks for its earlier runs only where some are."""
        return {name for (name,) in self.db.execute("SELECT DISTINCT name FROM earlier_runs")}

    def jobs(self, states: list[str] | None = None, pattern: str | None = None, limit: int = 1000) -> list[JobRow]:
        self._flush()
        query, params = "SELECT * FROM jobs WHERE 1", []
        if states:
            query += f" AND state IN ({', '.join('?' * len(states))})"
            params += states
        if pattern:
            query += " AND name GLOB ?"
            params.append(pattern)
        query += " ORDER BY updated_at DESC LIMIT ?"
        params.append(limit)
        return [JobRow(*row) for row in self.db.execute(query, params)]

    def in_flight(self) -> dict[str, tuple[str, str | None]]:
        """Each in-flight job's state and runner, all a cycle compares the cluster's answer
        with: whole rows were a cycle's peak, 15 MiB at 30,000 held jobs."""
        self._flush()
        states = {state: state for state in JobState.IN_FLIGHT}     # one string per state, not per row
        query = f"SELECT name, state, runner FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        return {name: (states[state], runner) for name, state, runner in self.db.execute(query, list(states))}

    def transitions(self, name: str) -> list[tuple[str, float, str | None]]:
        self._flush()
        return list(self.db.execute("SELECT state, at, detail FROM transitions WHERE name = ? ORDER BY at", (name,)))

    def counts(self) -> dict[str, int]:
        self._flush()
        return dict(self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def rebuild(self, dropbox: Path) -> int:
        """Forget the index and read it again from the dropbox's files."""
        rows = 0
        with self.batch():
            self.db.execute("DELETE FROM jobs")
            for entry in os.scandir(dropbox):
                if not entry.is_file(follow_symlinks=False):
                    continue
                name, state, fields = _state_of_file(Path(entry.path))
                if state is None:
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime
                self.db.execute(
                    "INSERT OR REPLACE INTO jobs (name, job_id, state, status, message, first_seen, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, fields.get("id"), state, fields.get("status"), fields.get("message"), mtime, mtime))
                rows += 1
        return rows

    # -- earlier runs of resubmitted jobs ---------------------------------------------------
    def remember_earlier_run(self, name: str, block: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO earlier_runs VALUES (?, ?, ?)", (name, json.dumps(block), time.time()))

    def earlier_runs(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(block) for (block,) in
                self.db.execute("SELECT block FROM earlier_runs WHERE name = ? ORDER BY at", (name,))]

    def forget_earlier_runs(self, name: str) -> None:
        self.db.execute("DELETE FROM earlier_runs WHERE name = ?", (name,))

    # -- input digests ------------------------------------------------------------------------
    def file_digest(self, path: str, handle: BinaryIO) -> str:
        """sha256 of a file (open as ``handle``, so the file hashed is the file checked),
        read once and remembered while its size and mtime hold."""
        stat = os.fstat(handle.fileno())
        row = self.db.execute("SELECT sha256 FROM file_digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                              (path, stat.st_size, stat.st_mtime_ns)).fetchone()
        if row:
            return row[0]
        digest = hashlib.sha256()
        for chunk in iter(lambda: handle.read(DIGEST_CHUNK), b""):
            digest.update(chunk)
        self.db.execute("INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?)",
                        (path, stat.st_size, stat.st_mtime_ns, digest.hexdigest()))
        return digest.hexdigest()


def _state_of_file(path: Path) -> tuple[str, str | None, dict[str, Any]]:
    name = path.name
    if name.startswith("."):
        return name, None, {}
    if name.endswith(".job"):
        return name, "waiting", {}
    for suffix, state in ((".submitted", "submitted"), (".finished", "finished")):
        if name.endswith(".job" + suffix):
            try:
                document = load_bounded_yaml(read_regular(path, 16 << 20).decode("utf-8")) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError, UnusableEntry):
                document = {}
            if not isinstance(document, dict):
                document = {}
            fields = document.get("job", {}) if state == "finished" else document
            return name[: -len(suffix)], state, fields if isinstance(fields, dict) else {}
    return name, None, {}


def _is_corrupt(error: sqlite3.DatabaseError) -> bool:
    """Garbage or a damaged file, not a lock or a full disk (those are waited out)."""
    text = str(error).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text

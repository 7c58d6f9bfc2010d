"""Job records in SQLite (``<data_dir>/jobs.sqlite3``), with a folder per job for its files.

A job has a ``kind`` (``pacs-push``, ``pacs-segment``...), an optional unique ``key`` (e.g. what a
resend of the same work maps to), a :class:`JobState`, an attempt count, the last error (stable code
and message), timestamps, an optional result file and free-form JSON ``info``. Items
(``add_item``) are per-job records keyed by a string, e.g. the instances of a series, each with its
own state (``ok`` or ``dropped`` with a reason). State changes are compare-and-set
(:meth:`JobStore.transition`), so two workers never run one job. Records are committed with
``synchronous=FULL``: a job the store answered for survives a crash or a SIGKILL.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class JobState(str, enum.Enum):
    """Where a job is. ``done`` and ``failed`` are final."""

    RECEIVING = "receiving"  # input still arriving (a pushed series)
    QUEUED = "queued"  # ready to run
    RUNNING = "running"  # being processed
    RETRYING = "retrying"  # a result waits for its delivery to be retried at ``next_attempt_at``
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = (JobState.DONE, JobState.FAILED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    first_attempt_at REAL,
    next_attempt_at REAL,
    result_path TEXT,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (kind, state);
CREATE TABLE IF NOT EXISTS job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    item_key TEXT NOT NULL,
    state TEXT NOT NULL,
    info TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, item_key)
);
"""

_COLUMNS = (
    "id",
    "kind",
    "key",
    "state",
    "attempts",
    "error_code",
    "error",
    "created_at",
    "updated_at",
    "first_attempt_at",
    "next_attempt_at",
    "result_path",
    "info",
)
_UPDATABLE = set(_COLUMNS) - {"id", "kind", "created_at", "info"}


@dataclass
class Job:
    """One job record (a snapshot; re-read it with :meth:`JobStore.get`)."""

    id: str
    kind: str
    key: Optional[str]
    state: JobState
    attempts: int
    error_code: Optional[str]
    error: Optional[str]
    created_at: float
    updated_at: float
    first_attempt_at: Optional[float]
    next_attempt_at: Optional[float]
    result_path: Optional[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class JobItem:
    key: str
    state: str
    info: dict[str, Any]


class JobStore:
    """The job records of one data folder (module docstring).

    Args:
        data_dir: ``MSDN_DATA_DIR``; created if missing. Job folders are ``<data_dir>/jobs/<id>``.
    """

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "jobs.sqlite3"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def job_dir(self, job_id: str) -> Path:
        """The folder of a job's files (not created)."""
        return self.data_dir / "jobs" / job_id

    # --- records -------------------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        values = dict(row)
        values["state"] = JobState(values["state"])
        values["info"] = json.loads(values["info"] or "{}")
        return Job(**values)

    def create(
        self,
        kind: str,
        *,
        key: Optional[str] = None,
        state: JobState | str = JobState.QUEUED,
        info: Optional[dict[str, Any]] = None,
    ) -> tuple[Job, bool]:
        """A new job, or the existing one with the same ``key``; returns (job, created)."""
        now = time.time()
        job_id = uuid.uuid4().hex
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO jobs (id, kind, key, state, created_at, updated_at, info) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, kind, key, JobState(state).value, now, now, json.dumps(info or {})),
            )
            created = cursor.rowcount == 1
            if created:
                job = self.get(job_id)
            else:
                job = self.find(key)  # type: ignore[arg-type]
        assert job is not None
        return job, created

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row is not None else None

    def find(self, key: str) -> Optional[Job]:
        """The job with this ``key``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return self._job(row) if row is not None else None

    def list(
        self,
        *,
        kinds: Optional[Sequence[str]] = None,
        states: Optional[Iterable[JobState | str]] = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first."""
        where, args = self._filters(kinds, states)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (*args, int(limit), int(offset)),
            ).fetchall()
        return [self._job(r) for r in rows]

    def count_by_state(self, *, kinds: Optional[Sequence[str]] = None) -> dict[str, int]:
        where, args = self._filters(kinds, None)
        with self._lock:
            rows = self._db.execute(f"SELECT state, COUNT(*) FROM jobs {where} GROUP BY state", args).fetchall()
        return {state.value: 0 for state in JobState} | {r[0]: int(r[1]) for r in rows}

    @staticmethod
    def _filters(kinds, states) -> tuple[str, tuple]:
        clauses, args = [], []
        if kinds:
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        if states is not None:
            values = [JobState(s).value for s in states]
            clauses.append(f"state IN ({','.join('?' * len(values))})")
            args.extend(values)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args)

    def update(self, job_id: str, *, info: Optional[dict[str, Any]] = None, **fields: Any) -> Optional[Job]:
        """Set columns (``state``, ``attempts``, ``error``...) and merge ``info`` keys; returns the job."""
        self._check_fields(fields)
        with self._lock:
            self._set(job_id, fields, info)
            return self.get(job_id)

    def transition(
        self,
        job_id: str,
        from_states: Iterable[JobState | str],
        to_state: JobState | str,
        *,
        info: Optional[dict[str, Any]] = None,
        **fields: Any,
    ) -> Optional[Job]:
        """Move the job to ``to_state`` only if it is in one of ``from_states``; None when it was not."""
        self._check_fields(fields)
        allowed = {JobState(s).value for s in from_states}
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row[0] not in allowed:
                    self._db.execute("COMMIT")
                    return None
                self._set(job_id, {**fields, "state": JobState(to_state)}, info, in_transaction=True)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return self.get(job_id)

    @staticmethod
    def _check_fields(fields: dict[str, Any]) -> None:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"fields must be among {sorted(_UPDATABLE)}, got {sorted(unknown)}")

    def _set(self, job_id: str, fields: dict[str, Any], info: Optional[dict[str, Any]], *, in_transaction=False):
        values = {k: (v.value if isinstance(v, JobState) else v) for k, v in fields.items()}
        values["updated_at"] = time.time()
        if info:
            row = self._db.execute("SELECT info FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                values["info"] = json.dumps({**json.loads(row[0] or "{}"), **info})
        assignments = ", ".join(f"{k} = ?" for k in values)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def due(self, *, kinds: Sequence[str], now: Optional[float] = None, limit: int = 16) -> list[Job]:
        """Jobs ready to run: queued, or retrying with ``next_attempt_at`` reached (oldest first)."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(kinds))
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE kind IN ({marks}) AND (state = ? OR (state = ? AND "
                "COALESCE(next_attempt_at, 0) <= ?)) ORDER BY updated_at LIMIT ?",
                (*kinds, JobState.QUEUED.value, JobState.RETRYING.value, now, int(limit)),
            ).fetchall()
        return [self._job(r) for r in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # --- items ---------------------------------------------------------------------------------

    def add_item(self, job_id: str, key: str, *, state: str = "ok", info: Optional[dict[str, Any]] = None) -> bool:
        """Record an item once; False when the job already had an item with this key."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO job_items (job_id, item_key, state, info) VALUES (?, ?, ?, ?)",
                (job_id, key, state, json.dumps(info or {})),
            )
            return cursor.rowcount == 1

    def set_item(self, job_id: str, key: str, *, state: str, info: Optional[dict[str, Any]] = None) -> None:
        """Insert or replace an item."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO job_items (job_id, item_key, state, info) VALUES (?, ?, ?, ?)",
                (job_id, key, state, json.dumps(info or {})),
            )

    def item(self, job_id: str, key: str) -> Optional[JobItem]:
        with self._lock:
            row = self._db.execute(
                "SELECT item_key, state, info FROM job_items WHERE job_id = ? AND item_key = ?", (job_id, key)
            ).fetchone()
        return JobItem(row[0], row[1], json.loads(row[2] or "{}")) if row is not None else None

    def items(self, job_id: str, *, state: Optional[str] = None) -> list[JobItem]:
        query = "SELECT item_key, state, info FROM job_items WHERE job_id = ?"
        args: tuple = (job_id,)
        if state is not None:
            query += " AND state = ?"
            args += (state,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY item_key", args).fetchall()
        return [JobItem(r[0], r[1], json.loads(r[2] or "{}")) for r in rows]

    def count_items(self, job_id: str, *, state: Optional[str] = None) -> int:
        query = "SELECT COUNT(*) FROM job_items WHERE job_id = ?"
        args: tuple = (job_id,)
        if state is not None:
            query += " AND state = ?"
            args += (state,)
        with self._lock:
            return int(self._db.execute(query, args).fetchone()[0])

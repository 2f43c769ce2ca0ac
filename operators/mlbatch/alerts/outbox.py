"""A local outbox so no alert is lost: every alert is written here before it is sent.

One SQLite file per machine (`MLBATCH_ALERTS_DIR`, else `$AIRFLOW_HOME/mlbatch_alerts`). An alert is
`pending` until Slack accepted it (`sent`), or `local` when no Slack token is configured. Pending alerts
are re-sent by the next alert on this machine or by `python -m mlbatch.alerts flush`, one flusher at a
time (a lock file beside the database), so two processes never post the same alert twice. The file is
bounded: sent and local alerts older than `KEEP_DAYS` go, and beyond `MAX_ENTRIES` the oldest entries
go (pending ones last).
The same file remembers the Slack thread of each task's last failure alert, so repeated failures of one
task within the spec's window become replies instead of new messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    thread_key TEXT,
    channel TEXT,
    payload TEXT NOT NULL,          -- chat.postMessage arguments (text, blocks, ...), already redacted
    attachment TEXT,                -- full task log for the thread, already redacted
    attachment_name TEXT,
    status TEXT NOT NULL,           -- pending | sent | local
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent REAL,
    ts TEXT,
    channel_id TEXT
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts(status);
CREATE TABLE IF NOT EXISTS threads (
    thread_key TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    ts TEXT NOT NULL,
    started REAL NOT NULL
);
"""


log = logging.getLogger(__name__)

KEEP_DAYS = 30          # sent/local alerts are kept this long (for `show` and threads)
MAX_ENTRIES = 5000      # hard bound on the file, whatever the status
THREAD_KEEP_DAYS = 7


@dataclass
class OutboxEntry:
    id: int
    created: float
    kind: str
    thread_key: str | None
    channel: str | None
    payload: dict
    attachment: str | None
    attachment_name: str | None
    status: str
    attempts: int
    last_error: str | None
    ts: str | None


def default_dir() -> Path:
    configured = os.environ.get("MLBATCH_ALERTS_DIR")
    if configured:
        return Path(configured)
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "mlbatch_alerts"


class Outbox:
    def __init__(self, folder: str | Path | None = None):
        self.path = Path(folder or default_dir()) / "outbox.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # Short busy timeout: several task processes on one machine may write at once, none may stall.
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add(self, *, kind: str, channel: str | None, payload: dict, thread_key: str | None = None,
            attachment: str | None = None, attachment_name: str | None = None, status: str = "pending") -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO alerts (created, kind, thread_key, channel, payload, attachment, attachment_name,"
                " status) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), kind, thread_key, channel, json.dumps(payload), attachment, attachment_name, status))
            entry_id = int(cur.lastrowid)
        self.prune()
        return entry_id

    def prune(self, keep_days: float = KEEP_DAYS, max_entries: int = MAX_ENTRIES) -> int:
        """Drop old delivered alerts and old threads; cap the entry count (pending entries go last).
        Returns how many alerts were dropped."""
        now = time.time()
        with self._db() as db:
            dropped = db.execute("DELETE FROM alerts WHERE status != 'pending' AND created < ?",
                                 (now - keep_days * 86400,)).rowcount
            db.execute("DELETE FROM threads WHERE started < ?", (now - THREAD_KEEP_DAYS * 86400,))
            excess = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] - max_entries
            if excess > 0:
                lost = db.execute("SELECT COUNT(*) FROM (SELECT status FROM alerts ORDER BY status = 'pending',"
                                  " id LIMIT ?) WHERE status = 'pending'", (excess,)).fetchone()[0]
                db.execute("DELETE FROM alerts WHERE id IN (SELECT id FROM alerts ORDER BY status = 'pending',"
                           " id LIMIT ?)", (excess,))
                dropped += excess
                if lost:
                    log.warning("Outbox %s over %d entries: dropped the %d oldest pending alerts unsent",
                                self.path, max_entries, lost)
        return dropped

    @contextlib.contextmanager
    def flush_lock(self) -> Iterator[bool]:
        """Yields True when this process holds the flush lock, False when another one flushes now."""
        with open(self.path.with_suffix(".flush.lock"), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def mark_sent(self, entry_id: int, *, ts: str | None, channel_id: str | None) -> None:
        """Sent; `last_error` keeps the history (why it was late, what was refused on the way)."""
        with self._db() as db:
            db.execute("UPDATE alerts SET status='sent', sent=?, ts=?, channel_id=?, attempts=attempts+1"
                       " WHERE id=?", (time.time(), ts, channel_id, entry_id))

    def mark_failed(self, entry_id: int, error: str) -> None:
        with self._db() as db:
            db.execute("UPDATE alerts SET attempts=attempts+1, last_error=? WHERE id=?", (error[:2000], entry_id))

    def note(self, entry_id: int, error: str) -> None:
        """Record a problem that did not stop the alert (e.g. the log file upload failed)."""
        with self._db() as db:
            db.execute("UPDATE alerts SET last_error=? WHERE id=?", (error[:2000], entry_id))

    def get(self, entry_id: int) -> OutboxEntry:
        with self._db() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id=?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"No alert {entry_id} in {self.path}")
        return _entry(row)

    def entries(self, status: str | None = None, limit: int = 1000) -> list[OutboxEntry]:
        query = f"SELECT {_COLUMNS} FROM alerts" + (" WHERE status=?" if status else "") + " ORDER BY id LIMIT ?"
        with self._db() as db:
            rows = db.execute(query, ((status, limit) if status else (limit,))).fetchall()
        return [_entry(r) for r in rows]

    def thread_for(self, thread_key: str, window_s: float) -> tuple[str, str] | None:
        """(channel id, ts) of the thread started by this task's failure within the window, if any."""
        with self._db() as db:
            row = db.execute("SELECT channel_id, ts, started FROM threads WHERE thread_key=?",
                             (thread_key,)).fetchone()
        if row is None or time.time() - row[2] > window_s:
            return None
        return row[0], row[1]

    def remember_thread(self, thread_key: str, channel_id: str, ts: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO threads (thread_key, channel_id, ts, started) VALUES (?, ?, ?, ?)",
                       (thread_key, channel_id, ts, time.time()))


_COLUMNS = ("id, created, kind, thread_key, channel, payload, attachment, attachment_name, status, attempts,"
            " last_error, ts")


def _entry(row: tuple) -> OutboxEntry:
    return OutboxEntry(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7], row[8],
                       row[9], row[10], row[11])

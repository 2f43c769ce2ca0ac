"""A local outbox so no alert is lost: every alert is written here before it is sent.

One SQLite file per machine (`MLBATCH_ALERTS_DIR`, else `$AIRFLOW_HOME/mlbatch_alerts`), shared by the
task processes that raise alerts and the flusher (`python -m mlbatch.alerts flush --loop`) that retries
them. An alert is `pending` until Slack accepted it (`sent`), or `local` when no Slack token is
configured. Whoever sends holds the flush lock (a lock file beside the database) and sends pending
alerts oldest first, re-reading each one's status under the lock: one sender at a time, so two
processes never post the same alert twice and alerts arrive in the order they were raised.

Besides the alerts, the file keeps the Slack route's state (`route`): how long to wait before the next
try after a failure (exponential backoff) and until when Slack asked us to wait (429 `Retry-After`), so
every process on the machine honours them. The file is bounded: sent and local alerts older than
`KEEP_DAYS` go, and beyond `MAX_ENTRIES` the oldest entries go (pending ones last).
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
from collections.abc import Callable, Iterator
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
    attachment TEXT,                -- full task log for the thread, already redacted (or PNG bytes: the gate chart)
    attachment_name TEXT,
    status TEXT NOT NULL,           -- pending | sent | local
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent REAL,
    ts TEXT,
    channel_id TEXT
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts(status);
CREATE TABLE IF NOT EXISTS route (
    conn_id TEXT PRIMARY KEY,       -- the Slack connection the state is about
    failures INTEGER NOT NULL DEFAULT 0,  -- consecutive failed tries (backoff exponent)
    backoff_until REAL,             -- the flusher's next try after a failure
    retry_after_until REAL,         -- Slack's 429 Retry-After: nobody sends before this
    reason TEXT                     -- why, in words (the delayed alerts say it)
);
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
# Columns added after the first release: (name, type), added to older files when they are opened.
ADDED_COLUMNS = (("conn_id", "TEXT"), ("webhook_conn_id", "TEXT"), ("first_error", "TEXT"), ("next_try", "REAL"))


def wall_clock() -> float:
    """The outbox's clock (created/sent stamps, backoff deadlines); tests replace it with a simulated one."""
    return time.time()


@dataclass
class OutboxEntry:
    id: int
    created: float
    kind: str
    thread_key: str | None
    channel: str | None
    payload: dict
    attachment: str | bytes | None  # text (a task log) or PNG bytes (the quality gate's chart)
    attachment_name: str | None
    status: str
    attempts: int
    last_error: str | None
    ts: str | None
    conn_id: str | None = None
    webhook_conn_id: str | None = None
    first_error: str | None = None  # why it was not sent at once, in words (the delayed note says it)
    next_try: float | None = None  # an alert Slack refused by itself waits until then
    sent: float | None = None
    channel_id: str | None = None  # where Slack put it (with `ts`: the message, for chat.update)


@dataclass
class RouteState:
    conn_id: str
    failures: int = 0
    backoff_until: float | None = None
    retry_after_until: float | None = None
    reason: str | None = None


def default_dir() -> Path:
    configured = os.environ.get("MLBATCH_ALERTS_DIR")
    if configured:
        return Path(configured)
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "mlbatch_alerts"


class Outbox:
    def __init__(self, folder: str | Path | None = None, clock: Callable[[], float] | None = None):
        self.path = Path(folder or default_dir()) / "outbox.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock if clock is not None else wall_clock
        with self._db() as db:
            db.executescript(SCHEMA)
            have = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    try:
                        db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {kind}")
                    except sqlite3.OperationalError as exc:  # another process added it just now
                        if "duplicate column" not in str(exc):
                            raise

    def _db(self) -> sqlite3.Connection:
        # Short busy timeout: several task processes on one machine may write at once, none may stall.
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def add(self, *, kind: str, channel: str | None, payload: dict, thread_key: str | None = None,
            attachment: str | bytes | None = None, attachment_name: str | None = None, status: str = "pending",
            conn_id: str | None = None, webhook_conn_id: str | None = None) -> int:
        """Queue an alert; `conn_id`/`webhook_conn_id`: the Slack connections it goes through (None: the
        sender's default), so a flusher sends every pipeline's alerts through that pipeline's connection."""
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO alerts (created, kind, thread_key, channel, payload, attachment, attachment_name,"
                " status, conn_id, webhook_conn_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.clock(), kind, thread_key, channel, json.dumps(payload), attachment, attachment_name, status,
                 conn_id, webhook_conn_id))
            entry_id = int(cur.lastrowid)
        self.prune()
        return entry_id

    def prune(self, keep_days: float = KEEP_DAYS, max_entries: int = MAX_ENTRIES) -> int:
        """Drop old delivered alerts and old threads; cap the entry count (pending entries go last).
        Returns how many alerts were dropped."""
        now = self.clock()
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
    def flush_lock(self, wait_s: float = 0.0) -> Iterator[bool]:
        """Yields True when this process holds the flush lock (the right to send), False when another
        process held it for all of `wait_s` seconds (real time: a lock is held by real work)."""
        with open(self.path.with_suffix(".flush.lock"), "a") as handle:
            give_up = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        yield False
                        return
                    time.sleep(min(0.05, max(0.0, give_up - time.monotonic())))
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def mark_sent(self, entry_id: int, *, ts: str | None, channel_id: str | None) -> None:
        """Sent; `last_error` keeps the history (why it was late, what was refused on the way)."""
        with self._db() as db:
            db.execute("UPDATE alerts SET status='sent', sent=?, ts=?, channel_id=?, attempts=attempts+1,"
                       " next_try=NULL WHERE id=?", (self.clock(), ts, channel_id, entry_id))

    def mark_failed(self, entry_id: int, error: str, *, reason: str | None = None,
                    next_try: float | None = None) -> None:
        """A try that failed: `error` in detail; `reason` in words (kept from the first failure: what made
        the alert late); `next_try`: this alert alone waits until then (Slack refused this one)."""
        with self._db() as db:
            db.execute("UPDATE alerts SET attempts=attempts+1, last_error=?, first_error=COALESCE(first_error, ?),"
                       " next_try=? WHERE id=?", (error[:2000], (reason or error)[:500], next_try, entry_id))

    def hold(self, entry_id: int, reason: str) -> None:
        """Not tried now (Slack asked us to wait): the alert will be late, and this is why."""
        with self._db() as db:
            db.execute("UPDATE alerts SET first_error=COALESCE(first_error, ?) WHERE id=? AND status='pending'",
                       (reason[:500], entry_id))

    def due(self, limit: int = 50) -> list[OutboxEntry]:
        """Pending alerts that may be tried now, oldest first (alerts Slack refused wait for `next_try`)."""
        with self._db() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM alerts WHERE status='pending' AND"
                              " (next_try IS NULL OR next_try <= ?) ORDER BY id LIMIT ?",
                              (self.clock(), limit)).fetchall()
        return [_entry(r) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest waiting alert may be tried (None: nothing pending)."""
        with self._db() as db:
            row = db.execute("SELECT COUNT(*), MIN(COALESCE(next_try, 0)) FROM alerts WHERE status='pending'"
                             ).fetchone()
        return None if not row[0] else float(row[1])

    # -- the Slack route's state, shared by every process on this outbox -------------------------
    def route(self, conn_id: str) -> RouteState:
        with self._db() as db:
            row = db.execute("SELECT conn_id, failures, backoff_until, retry_after_until, reason FROM route"
                             " WHERE conn_id=?", (conn_id,)).fetchone()
        return RouteState(*row) if row else RouteState(conn_id)

    def route_failed(self, conn_id: str, *, backoff_s: float, retry_after_s: float | None, reason: str) -> RouteState:
        """One more consecutive failure: the next try waits `backoff_s` (and `retry_after_s`, if Slack said)."""
        now = self.clock()
        with self._db() as db:
            db.execute("INSERT INTO route (conn_id, failures) VALUES (?, 0) ON CONFLICT(conn_id) DO NOTHING",
                       (conn_id,))
            db.execute("UPDATE route SET failures=failures+1, backoff_until=?, reason=?,"
                       " retry_after_until=CASE WHEN ? IS NULL THEN retry_after_until"
                       " ELSE MAX(COALESCE(retry_after_until, 0), ?) END WHERE conn_id=?",
                       (now + backoff_s, reason[:500], retry_after_s,
                        now + (retry_after_s or 0.0), conn_id))
        return self.route(conn_id)

    def route_ok(self, conn_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM route WHERE conn_id=?", (conn_id,))

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
        if row is None or self.clock() - row[2] > window_s:
            return None
        return row[0], row[1]

    def remember_thread(self, thread_key: str, channel_id: str, ts: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO threads (thread_key, channel_id, ts, started) VALUES (?, ?, ?, ?)",
                       (thread_key, channel_id, ts, self.clock()))


_COLUMNS = ("id, created, kind, thread_key, channel, payload, attachment, attachment_name, status, attempts,"
            " last_error, ts, conn_id, webhook_conn_id, first_error, next_try, sent, channel_id")


def _entry(row: tuple) -> OutboxEntry:
    return OutboxEntry(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), *row[6:])

"""SQLite backend of the state store: one file ``$STATE_DIR/state.sqlite3`` shared by the workers of one container.

WAL mode lets readers run beside the one writer; every change is one ``BEGIN IMMEDIATE`` transaction, so two
workers (processes) or two threads never interleave half-transitions, and a writer waits up to the busy timeout for
another instead of failing at once. Each thread of each process has its own connection (a connection inherited over
``fork`` is abandoned, never used). ``synchronous=NORMAL``: in WAL mode a commit survives a crash of the process
(kill -9); only a power loss or kernel crash may lose the last commits, and Render's disk does not outlive those.
Expired rows are hidden from reads and deleted by ``trim(now)``, which the lease holder's housekeeping runs
(background/housekeeping.py, with the heartbeat). The file is lost with the container on Render: see README
"State and retention".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Iterator, Mapping, Sequence

from services.state_migrations import OLDEST_READER, SCHEMA_VERSION, SchemaTooNew, check_readable, steps_after
from services.state_store import (
    ACTIONS_KEEP,
    ACTIONS_TTL_SECONDS,
    DEAD_RECENT_COUNT,
    RECENT_KEEP,
    REFRESH_LOCK_TTL_SECONDS,
    REFRESH_LOCK_WAIT_SECONDS,
    Fence,
    FlagRequest,
    OutboxItem,
    OutboxStatus,
    ParkedEmail,
    StaleFence,
    StateStoreError,
    appended_log,
    bounded,
    check_counter_name,
    check_record_address,
    check_status,
    counter_label_part,
    counter_labels,
    dumps,
    fold_series,
    hit_window,
    now_or_clock,
    parse_label_part,
    queued_status,
    translating,
)
from settings import Settings

logger = logging.getLogger(__name__)

DB_FILE_NAME = "state.sqlite3"
DEFAULT_BUSY_TIMEOUT_SECONDS = 10.0
_errors = translating(sqlite3.Error, OSError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    mailbox TEXT NOT NULL, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (mailbox, uidvalidity));
CREATE TABLE IF NOT EXISTS done (email_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS done_expiry ON done (expires_at);
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY, email_id TEXT NOT NULL, payload TEXT NOT NULL, mailbox TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, message_id TEXT, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,
    first_attempt_at REAL, last_error TEXT, last_status INTEGER, dead_reason TEXT, response_excerpt TEXT,
    delivered_at REAL, dead_at REAL, in_flight INTEGER NOT NULL DEFAULT 0, claimed_until REAL, claim_owner TEXT,
    -- due_at: when the item is claimable next (next_attempt_at, or claimed_until while claimed)
    due_at REAL NOT NULL, pending_since REAL, expires_at REAL);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_pending_since ON outbox (pending_since) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox (delivered_at) WHERE status = 'delivered';
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (dead_at) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS outbox_expiry ON outbox (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS flags (
    mailbox TEXT NOT NULL, uidvalidity INTEGER NOT NULL, uid INTEGER NOT NULL, message_id TEXT,
    requested_at REAL NOT NULL, PRIMARY KEY (mailbox, uidvalidity, uid));
CREATE INDEX IF NOT EXISTS flags_order ON flags (mailbox, requested_at);
CREATE TABLE IF NOT EXISTS r2_copies (url_hash TEXT PRIMARY KEY, record TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS r2_expiry ON r2_copies (expires_at);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labelled INTEGER NOT NULL, label TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (name, labelled, label));
CREATE TABLE IF NOT EXISTS status (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS recent (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, entry TEXT NOT NULL);
"""

_ITEM_COLUMNS = ("event_id", "email_id", "payload", "mailbox", "uidvalidity", "uid", "message_id", "status",
                 "attempts", "next_attempt_at", "created_at", "first_attempt_at", "last_error", "last_status",
                 "dead_reason", "response_excerpt", "delivered_at", "dead_at", "in_flight", "claimed_until",
                 "claim_owner", "mailbox_id", "target_id", "attempt_log", "held_until")
_SELECT_ITEM = f"SELECT {', '.join(_ITEM_COLUMNS)} FROM outbox"
# Claimable now (one parameter: now): due_at is next_attempt_at, a live claim's claimed_until, a hold's held_until.
_DUE = "status = 'pending' AND due_at <= ?"
_DUE_COLUMNS = "due_at, next_attempt_at, attempt_log"  # what _due_fields reads of an oldest due item
_NO_DUE_ITEM = {"oldest_due_at": None, "oldest_due_delay": None}
_COUNTER_UPSERT = ("INSERT INTO counters (name, labelled, label, value) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (name, labelled, label) DO UPDATE SET value = value + excluded.value")
_DONE_UPSERT = ("INSERT INTO done (email_id, outcome, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (email_id) DO UPDATE SET outcome = excluded.outcome, expires_at = excluded.expires_at")
_FLAG_INSERT = ("INSERT INTO flags (mailbox, uidvalidity, uid, message_id, requested_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (mailbox, uidvalidity, uid) DO NOTHING")
# _SCHEMA is the layout of version 1; services/state_migrations.py's steps bring it (and any older file) up to date.
_META_GET = "SELECT value FROM meta WHERE key = ?"
_META_SET = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


def _fence_is_stale(conn: sqlite3.Connection, fence: Fence) -> bool:
    row = conn.execute("SELECT epoch FROM epochs WHERE mailbox_id = ?", (fence[0],)).fetchone()
    return row is not None and int(row[0]) > int(fence[1])


def _check_fence(conn: sqlite3.Connection, fence: Fence | None) -> None:
    if fence is not None and _fence_is_stale(conn, fence):
        raise StaleFence(f"sqlite: the lease of mailbox {fence[0]} has a newer epoch than {fence[1]}")


def state_db_path(settings: Settings) -> str:
    return os.path.join(settings.state_dir, DB_FILE_NAME)


_PARKED_COLUMNS = tuple(f.name for f in fields(ParkedEmail))


def _parked_values(parked: ParkedEmail) -> tuple:
    return tuple(getattr(parked, name) for name in _PARKED_COLUMNS)


def _scheduled_delay(next_attempt_at: float, log: str | None) -> float:
    """How long the item was scheduled to wait after its last attempt (0 without one)."""
    attempts = json.loads(log) if log else []
    return max(0.0, next_attempt_at - float(attempts[-1].get("at") or next_attempt_at)) if attempts else 0.0


def _due_fields(due_at: float, next_attempt_at: float, log: str | None) -> dict:
    """``oldest_due_at`` and ``oldest_due_delay`` of an oldest due item (a row of ``_DUE_COLUMNS``)."""
    return {"oldest_due_at": float(due_at), "oldest_due_delay": _scheduled_delay(float(next_attempt_at), log)}


def _log_with(log: str | None, attempt: dict | None) -> str | None:
    if attempt is None:
        return log
    return dumps(appended_log(json.loads(log) if log else [], attempt))


def _row_to_item(row: sqlite3.Row | tuple) -> OutboxItem:
    values = dict(zip(_ITEM_COLUMNS, row, strict=True))
    values["payload"] = json.loads(values["payload"])
    values["in_flight"] = bool(values["in_flight"])
    values["attempt_log"] = json.loads(values["attempt_log"]) if values["attempt_log"] else []
    return OutboxItem(**values)


class _ThreadConnection:
    """A thread's own connection; closed as soon as the thread ends (its thread-local data is dropped then)."""

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid

    def __del__(self) -> None:
        if self.pid == os.getpid():  # never a connection inherited over fork
            try:
                self.conn.close()
            except Exception:  # a destructor must not raise
                pass


class SqliteStateStore:
    """State in one SQLite file (see the module docstring). Safe for threads and processes of one host."""

    backend = "sqlite"

    def __init__(self, path: str, *, retention_seconds: float,
                 busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self._retention = float(retention_seconds)
        self._busy_timeout = float(busy_timeout_seconds)
        self._local = threading.local()
        self._all_lock = threading.Lock()
        # Every connection opened: (pid, its thread, connection). Connections of threads that ended are closed as
        # soon as another one is opened, so short-lived threads (the R2 offload's) never pile up descriptors.
        self._all: list[tuple[int, weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._closed = False
        self._refresh_locks: dict[str, threading.Lock] = {}
        self._initialise()

    # --- connections and transactions --------------------------------------------------------------------------

    @_errors
    def _initialise(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = self._conn()
        # Switching to WAL takes a lock that the busy handler does not always wait for; several workers starting
        # at once may collide here, so retry for the busy timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        if str(mode).lower() != "wal":
            raise StateStoreError(f"sqlite: cannot switch {self.path} to WAL mode (got {mode})")
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1')")
            self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to SCHEMA_VERSION, in the caller's transaction (one worker migrates, the others wait)."""
        version = int(conn.execute(_META_GET, ("schema_version",)).fetchone()[0])
        oldest_row = conn.execute(_META_GET, ("oldest_reader",)).fetchone()
        try:
            check_readable(version, int(oldest_row[0]) if oldest_row else 1)
        except SchemaTooNew as exc:
            raise StateStoreError(f"sqlite: {self.path}: {exc}") from exc
        for step in steps_after(version):
            for statement in step.sqlite:
                conn.execute(statement)
            conn.execute(_META_SET, ("schema_version", str(step.version)))
            logger.info("STATE: %s migrated to schema version %d (%s)", self.path, step.version, step.summary)
        if version <= SCHEMA_VERSION:
            conn.execute(_META_SET, ("oldest_reader", str(OLDEST_READER)))

    @_errors
    def schema_version(self) -> int:
        return int(self._conn().execute(_META_GET, ("schema_version",)).fetchone()[0])

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StateStoreError("sqlite: the state store is closed")
        pid = os.getpid()
        holder = getattr(self._local, "holder", None)
        if holder is not None and holder.pid == pid:
            return holder.conn
        # isolation_level=None: no implicit transactions; every write opens BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        self._local.holder = _ThreadConnection(conn, pid)
        with self._all_lock:
            self._all = self._without_ended_threads(pid)
            self._all.append((pid, weakref.ref(threading.current_thread()), conn))
        return conn

    def _without_ended_threads(self, pid: int) -> list[tuple[int, weakref.ref[threading.Thread], sqlite3.Connection]]:
        """``_all`` minus the connections of this process's threads that ended, which are closed here."""
        kept = []
        for owner_pid, thread_ref, conn in self._all:
            thread = thread_ref()
            if owner_pid == pid and (thread is None or not thread.is_alive()):
                try:
                    conn.close()
                except sqlite3.Error:
                    logger.debug("sqlite close of an ended thread's connection failed", exc_info=True)
                continue
            kept.append((owner_pid, thread_ref, conn))
        return kept

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for reads of several statements."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _expires(self, now: float) -> float:
        return now + self._retention

    @_errors
    def ping(self) -> None:
        self._conn().execute("SELECT 1 FROM meta LIMIT 1").fetchall()

    # --- checkpoints -------------------------------------------------------------------------------------------

    @_errors
    def get_checkpoint(self, mailbox: str, uidvalidity: int) -> int | None:
        row = self._conn().execute("SELECT last_uid FROM checkpoints WHERE mailbox = ? AND uidvalidity = ?",
                                   (mailbox, int(uidvalidity))).fetchone()
        return None if row is None else int(row[0])

    @_errors
    def set_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int, *, fence: Fence | None = None) -> None:
        with self._write() as conn:
            _check_fence(conn, fence)
            conn.execute(
                "INSERT INTO checkpoints (mailbox, uidvalidity, last_uid, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (mailbox, uidvalidity) DO UPDATE SET last_uid = excluded.last_uid, "
                "updated_at = excluded.updated_at WHERE excluded.last_uid > checkpoints.last_uid",
                (mailbox, int(uidvalidity), int(last_uid), time.time()))

    @_errors
    def advance_epoch(self, mailbox_id: str) -> int:
        """A new lease holder's epoch for ``mailbox_id``: one more than any before."""
        with self._write() as conn:
            conn.execute("INSERT INTO epochs (mailbox_id, epoch) VALUES (?, 1) "
                         "ON CONFLICT (mailbox_id) DO UPDATE SET epoch = epoch + 1", (mailbox_id,))
            return int(conn.execute("SELECT epoch FROM epochs WHERE mailbox_id = ?", (mailbox_id,)).fetchone()[0])

    @_errors
    def has_any_checkpoint(self, mailbox: str) -> bool:
        return self._conn().execute("SELECT 1 FROM checkpoints WHERE mailbox = ? LIMIT 1",
                                    (mailbox,)).fetchone() is not None

    # --- done records ------------------------------------------------------------------------------------------

    @_errors
    def get_done(self, email_id: str) -> str | None:
        row = self._conn().execute("SELECT outcome FROM done WHERE email_id = ? AND expires_at > ?",
                                   (email_id, time.time())).fetchone()
        return None if row is None else row[0]

    @_errors
    def mark_done(self, email_id: str, outcome: str) -> None:
        with self._write() as conn:
            conn.execute(_DONE_UPSERT, (email_id, outcome, self._expires(time.time())))

    # --- outbox ------------------------------------------------------------------------------------------------

    @_errors
    def enqueue(self, item: OutboxItem) -> bool:
        return self.enqueue_all([item])[0]

    @_errors
    def enqueue_all(self, items: Sequence[OutboxItem], *, fence: Fence | None = None) -> list[bool]:
        """Queue the items of one email (one per target) in one transaction, so that no item of it can end, and
        the email be flagged done, before all of them are queued; True for each item created."""
        now = time.time()
        created: list[bool] = []
        with self._write() as conn:
            _check_fence(conn, fence)
            for item in items:
                status = queued_status(item)
                cursor = conn.execute(
                    "INSERT INTO outbox (event_id, email_id, payload, mailbox, uidvalidity, uid, message_id, status, "
                    "attempts, next_attempt_at, created_at, first_attempt_at, last_error, last_status, in_flight, "
                    "due_at, pending_since, mailbox_id, target_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    (item.event_id, item.email_id, dumps(item.payload), item.mailbox, int(item.uidvalidity),
                     int(item.uid), item.message_id, status, int(item.attempts), float(item.next_attempt_at),
                     float(item.created_at or now), item.first_attempt_at, item.last_error, item.last_status,
                     float(item.next_attempt_at), now, item.mailbox_id, item.target_id))
                created.append(cursor.rowcount > 0)
                if cursor.rowcount > 0:
                    conn.execute(_DONE_UPSERT, (item.email_id, "enqueued", self._expires(now)))
        return created

    @_errors
    def finish_enrichment(self, event_id: str, payload: dict, now: float) -> bool:
        """An ``enriching`` item becomes ``pending`` with its final body, due at ``now``; False if it was not
        enriching (finished already, by this process or another)."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET payload = ?, status = 'pending', next_attempt_at = ?, due_at = ? "
                "WHERE event_id = ? AND status = 'enriching'", (dumps(payload), float(now), float(now), event_id))
            return cursor.rowcount == 1

    @_errors
    def claim_due(self, owner: str, now: float, limit: int, claim_seconds: float, *,
                  mailbox_id: str | None = None, target_id: str | None = None,
                  fence: Fence | None = None) -> list[OutboxItem]:
        if limit <= 0:
            return []
        claimed_until = now + claim_seconds
        # A paused target's items stay pending, claimed by nobody (issue 20).
        where = _DUE + " AND target_id NOT IN (SELECT target_id FROM paused_targets)"
        params: list[float | str] = [now]
        if mailbox_id is not None and target_id is not None:
            where += " AND mailbox_id = ? AND target_id = ?"
            params += [mailbox_id, target_id]
        with self._write() as conn:
            _check_fence(conn, fence)
            rows = conn.execute(f"{_SELECT_ITEM} WHERE {where} ORDER BY due_at LIMIT ?",
                                (*params, int(limit))).fetchall()
            if not rows:
                return []
            items = [_row_to_item(row) for row in rows]
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, ?), "
                "in_flight = 1, claimed_until = ?, claim_owner = ?, due_at = ? WHERE event_id = ?",
                [(now, claimed_until, owner, claimed_until, item.event_id) for item in items])
            duplicates = sum(1 for item in items if item.in_flight)
            if duplicates:
                conn.execute(_COUNTER_UPSERT, ("possible_duplicates", 0, "", duplicates))
        for item in items:
            item.attempts += 1
            item.first_attempt_at = item.first_attempt_at if item.first_attempt_at is not None else now
            item.in_flight = True
            item.claimed_until = claimed_until
            item.claim_owner = owner
        return items

    def _finish(self, conn: sqlite3.Connection, event_id: str, assignments: str, values: tuple,
                outcome: str, counter: str, at: float, attempt: dict | None) -> bool:
        row = conn.execute("SELECT email_id, mailbox, uidvalidity, uid, message_id, target_id, attempt_log FROM outbox "
                           "WHERE event_id = ? AND status = 'pending'", (event_id,)).fetchone()
        if row is None:
            return False
        email_id, mailbox, uidvalidity, uid, message_id, target_id, log = row
        conn.execute(f"UPDATE outbox SET {assignments}, in_flight = 0, claimed_until = NULL, claim_owner = NULL, "
                     "pending_since = NULL, expires_at = ?, attempt_log = ? WHERE event_id = ?",
                     (*values, self._expires(at), _log_with(log, attempt), event_id))
        # The email is done, and flagged on the server, once every item of it (one per target) has ended:
        # 'delivered' when all were, else the first dead item's 'dead:<reason>'.
        open_items, dead_reason = conn.execute(
            "SELECT coalesce(sum(status IN ('pending', 'enriching')), 0), "
            "min(CASE WHEN status = 'dead' THEN dead_reason END) FROM outbox WHERE email_id = ?",
            (email_id,)).fetchone()
        if not open_items:
            conn.execute(_DONE_UPSERT, (email_id, outcome if dead_reason is None else f"dead:{dead_reason}",
                                        self._expires(at)))
            if uid:  # uid 0: not from IMAP (process-email), nothing to flag
                conn.execute(_FLAG_INSERT, (mailbox, uidvalidity, uid, message_id, at))
        conn.execute(_COUNTER_UPSERT, (counter, 1, counter_label_part({"target": target_id}), 1))
        return True

    @_errors
    def mark_delivered(self, event_id: str, status: int, now: float, attempt: dict | None = None, *,
                       fence: Fence | None = None) -> bool:
        """Never refused: the receiver has the webhook. A stale fence is only counted (``late_acknowledgements``)."""
        with self._write() as conn:
            if fence is not None and _fence_is_stale(conn, fence):
                conn.execute(_COUNTER_UPSERT, ("late_acknowledgements", 0, "", 1))
            return self._finish(conn, event_id, "status = 'delivered', delivered_at = ?, last_status = ?",
                                (now, int(status)), "delivered", "webhooks_delivered", now, attempt)

    @_errors
    def reschedule(self, event_id: str, next_attempt_at: float, error: str, status: int | None,
                   attempt: dict | None = None) -> bool:
        with self._write() as conn:
            row = conn.execute("SELECT target_id, attempt_log FROM outbox WHERE event_id = ? AND status = 'pending'",
                               (event_id,)).fetchone()
            if row is None:
                return False
            target_id, log = row
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, due_at = ?, last_error = ?, last_status = ?, in_flight = 0, "
                "claimed_until = NULL, claim_owner = NULL, attempt_log = ? WHERE event_id = ?",
                (next_attempt_at, next_attempt_at, bounded(error), status, _log_with(log, attempt), event_id))
            conn.execute(_COUNTER_UPSERT, ("webhook_retries", 1, counter_label_part({"target": target_id}), 1))
            return True

    @_errors
    def release_claim(self, event_id: str) -> bool:
        """Undo a claim that ended without an attempt: the attempt is not counted, the item is due again."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET attempts = max(attempts - 1, 0), in_flight = 0, claimed_until = NULL, "
                "claim_owner = NULL, due_at = next_attempt_at, "
                "first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at END "
                "WHERE event_id = ? AND status = 'pending' AND in_flight = 1", (event_id,))
            return cursor.rowcount > 0

    @_errors
    def hold(self, event_id: str, until: float, now: float) -> bool:
        """Hold a claimed item outside its target's delivery window: the claim is undone without counting an
        attempt, the item is due at ``until`` (``held_until``), and the time held is added to the start of its
        retry window (``first_attempt_at``), so that held time does not count toward RETRY hours."""
        held_for = max(0.0, float(until) - float(now))
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE outbox SET attempts = max(attempts - 1, 0), in_flight = 0, claimed_until = NULL, "
                "claim_owner = NULL, next_attempt_at = ?, due_at = ?, held_until = ?, pending_since = ?, "
                "first_attempt_at = CASE WHEN attempts <= 1 THEN NULL ELSE first_attempt_at + ? END "
                "WHERE event_id = ? AND status = 'pending' AND in_flight = 1",
                (float(until), float(until), float(until), float(until), held_for, event_id))
            return cursor.rowcount > 0

    @_errors
    def dead_letter(self, event_id: str, reason: str, status: int | None, excerpt: str | None,
                    now: float | None = None, attempt: dict | None = None) -> bool:
        at = now_or_clock(now)
        with self._write() as conn:
            return self._finish(conn, event_id,
                                "status = 'dead', dead_reason = ?, dead_at = ?, last_status = ?, response_excerpt = ?",
                                (reason, at, status, bounded(excerpt)), f"dead:{reason}", "dead_letters", at,
                                attempt)

    @_errors
    def get_item(self, event_id: str) -> OutboxItem | None:
        row = self._conn().execute(f"{_SELECT_ITEM} WHERE event_id = ? AND (expires_at IS NULL OR expires_at > ?)",
                                   (event_id, time.time())).fetchone()
        return None if row is None else _row_to_item(row)

    @_errors
    def list_items(self, status: str, limit: int = 100) -> list[OutboxItem]:
        """Pending: oldest first. Delivered and dead: newest first."""
        check_status(status)
        order = {OutboxStatus.PENDING: "pending_since ASC", OutboxStatus.ENRICHING: "created_at ASC",
                 OutboxStatus.DELIVERED: "delivered_at DESC", OutboxStatus.DEAD: "dead_at DESC"}[OutboxStatus(status)]
        rows = self._conn().execute(
            f"{_SELECT_ITEM} WHERE status = '{status}' AND (expires_at IS NULL OR expires_at > ?) "
            f"ORDER BY {order} LIMIT ?", (time.time(), max(0, int(limit)))).fetchall()
        return [_row_to_item(row) for row in rows]

    @_errors
    def replay(self, event_id: str | None = None, now: float | None = None, *, since: float | None = None,
               target_id: str | None = None) -> int:
        """Dead letters back to pending (one, or every one that died at or after ``since`` for ``target_id``);
        returns how many. Checked and changed in one transaction: of concurrent replays of one item, one counts it."""
        at = now_or_clock(now)
        with self._write() as conn:
            query = "SELECT event_id, email_id FROM outbox WHERE status = 'dead' AND expires_at > ?"
            params: tuple = (time.time(),)
            for column, operator, value in (("event_id", "=", event_id), ("dead_at", ">=", since),
                                            ("target_id", "=", target_id)):
                if value is not None:
                    query += f" AND {column} {operator} ?"
                    params += (value,)
            rows = conn.execute(query, params).fetchall()
            conn.executemany(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?, due_at = ?, in_flight = 0, "
                "pending_since = ?, dead_reason = NULL, dead_at = NULL, first_attempt_at = NULL, "
                "claimed_until = NULL, claim_owner = NULL, expires_at = NULL WHERE event_id = ?",
                [(at, at, at, row[0]) for row in rows])
            conn.executemany(_DONE_UPSERT, [(row[1], "enqueued", self._expires(at)) for row in rows])
            return len(rows)

    @_errors
    def items_for_email(self, email_id: str) -> list[OutboxItem]:
        """Every outbox item of one email (one per target), whatever its status, by target id."""
        rows = self._conn().execute(f"{_SELECT_ITEM} WHERE email_id = ? AND (expires_at IS NULL OR expires_at > ?) "
                                    "ORDER BY target_id", (email_id, time.time())).fetchall()
        return [_row_to_item(row) for row in rows]

    # --- paused targets, operator actions, window counters, records (issue 20) -----------------------------------

    @_errors
    def pause_target(self, target_id: str, now: float) -> bool:
        """Pause a target (durably): no claim hands out its items. False when it was paused already."""
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO paused_targets (target_id, paused_at) VALUES (?, ?) "
                                  "ON CONFLICT (target_id) DO NOTHING", (target_id, float(now)))
            return cursor.rowcount > 0

    @_errors
    def resume_target(self, target_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM paused_targets WHERE target_id = ?", (target_id,)).rowcount > 0

    @_errors
    def paused_targets(self) -> dict[str, float]:
        rows = self._conn().execute("SELECT target_id, paused_at FROM paused_targets").fetchall()
        return {target_id: float(at) for target_id, at in rows}

    @_errors
    def record_action(self, entry: dict, now: float) -> None:
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO actions (at, entry) VALUES (?, ?)", (float(now), dumps(entry)))
            conn.execute("DELETE FROM actions WHERE id <= ? OR at <= ?",
                         ((cursor.lastrowid or 0) - ACTIONS_KEEP, float(now) - ACTIONS_TTL_SECONDS))

    @_errors
    def actions(self, limit: int = 50) -> list[dict]:
        """The operator actions recorded, newest first (at most ``ACTIONS_KEEP``, none older than 30 days)."""
        rows = self._conn().execute("SELECT entry FROM actions WHERE at > ? ORDER BY id DESC LIMIT ?",
                                    (time.time() - ACTIONS_TTL_SECONDS,
                                     max(0, min(int(limit), ACTIONS_KEEP)))).fetchall()
        return [json.loads(row[0]) for row in rows]

    @_errors
    def hit(self, key: str, window_seconds: float, now: float) -> int:
        """Count one hit of ``key`` in the fixed window of ``window_seconds`` containing ``now``; the window's count."""
        index = hit_window(window_seconds, now)
        with self._write() as conn:
            conn.execute("DELETE FROM hits WHERE key = ? AND window_seconds = ? AND window_index < ?",
                         (key, float(window_seconds), index))
            row = conn.execute(
                "INSERT INTO hits (key, window_seconds, window_index, count, expires_at) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT (key, window_seconds, window_index) DO UPDATE SET count = count + 1 RETURNING count",
                (key, float(window_seconds), index, (index + 1) * float(window_seconds))).fetchone()
        return int(row[0])

    @staticmethod
    def _read_record(conn: sqlite3.Connection, namespace: str, key: str) -> dict | None:
        row = conn.execute("SELECT record FROM records WHERE namespace = ? AND key = ? AND expires_at > ?",
                           (namespace, key, time.time())).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def _write_record(conn: sqlite3.Connection, namespace: str, key: str, record: dict, ttl_seconds: float) -> None:
        conn.execute("INSERT OR REPLACE INTO records (namespace, key, record, expires_at) VALUES (?, ?, ?, ?)",
                     (namespace, key, dumps(record), time.time() + float(ttl_seconds)))

    @_errors
    def get_record(self, namespace: str, key: str) -> dict | None:
        check_record_address(namespace, key)
        return self._read_record(self._conn(), namespace, key)

    @_errors
    def put_record(self, namespace: str, key: str, record: dict, ttl_seconds: float) -> None:
        check_record_address(namespace, key)
        with self._write() as conn:
            self._write_record(conn, namespace, key, record, ttl_seconds)

    @_errors
    def compare_and_put_record(self, namespace: str, key: str, expected: dict | None, record: dict,
                               ttl_seconds: float) -> bool:
        """Write ``record`` only if the current one equals ``expected`` (None: there is none); in one transaction."""
        check_record_address(namespace, key)
        with self._write() as conn:
            if self._read_record(conn, namespace, key) != expected:
                return False
            self._write_record(conn, namespace, key, record, ttl_seconds)
            return True

    @_errors
    def outbox_stats(self, now: float) -> dict:
        cutoff = now - self._retention
        with self._read() as conn:
            # A held item (outside its target's window) is neither backlog nor stall: its age starts when it opens.
            pending, oldest, held = conn.execute(
                "SELECT coalesce(sum(held_until IS NULL OR held_until <= ?), 0), min(pending_since), "
                "coalesce(sum(held_until > ?), 0) FROM outbox WHERE status = 'pending'", (now, now)).fetchone()
            enriching, oldest_enriching = conn.execute(
                "SELECT count(*), min(created_at) FROM outbox WHERE status = 'enriching'").fetchone()
            oldest = min((value for value in (oldest, oldest_enriching) if value is not None), default=None)
            dead = conn.execute("SELECT count(*) FROM outbox WHERE status = 'dead' AND dead_at > ?",
                                (cutoff,)).fetchone()[0]
            recent = conn.execute(
                "SELECT event_id, dead_reason, last_status, dead_at FROM outbox WHERE status = 'dead' AND dead_at > ? "
                "ORDER BY dead_at DESC LIMIT ?", (cutoff, DEAD_RECENT_COUNT)).fetchall()
            due = conn.execute(f"SELECT {_DUE_COLUMNS} FROM outbox WHERE {_DUE} ORDER BY due_at LIMIT 1",
                               (now,)).fetchone()
        return {
            "pending": int(pending) + int(enriching),   # an enriching item is queued work too
            "enriching": int(enriching),
            "held": int(held),
            "oldest_pending_age_s": None if oldest is None else max(0.0, now - float(oldest)),
            **(_NO_DUE_ITEM if due is None else _due_fields(*due)),
            "dead": int(dead),
            "dead_recent": [{"event_id": event_id, "reason": reason, "status": code, "at": at}
                            for event_id, reason, code, at in recent],
        }

    @_errors
    def pending_owners(self) -> dict[str, dict[str, int]]:
        """How many pending items each mailbox id and each target id has."""
        with self._read() as conn:
            return {"mailboxes": self._pending_counts(conn, "mailbox_id"),
                    "targets": self._pending_counts(conn, "target_id")}

    @staticmethod
    def _pending_counts(conn: sqlite3.Connection, owner: str) -> dict[str, int]:
        """How many pending (and enriching) items each ``owner`` (``mailbox_id`` or ``target_id``) has."""
        rows = conn.execute(f"SELECT {owner}, count(*) FROM outbox WHERE status IN ('pending', 'enriching') "
                            f"GROUP BY {owner}").fetchall()
        return {name: int(n) for name, n in rows}

    # --- IMAP flag requests ------------------------------------------------------------------------------------

    @_errors
    def flag_keys(self) -> dict[str, int]:
        """How many flag requests wait under each mailbox state key."""
        rows = self._conn().execute("SELECT mailbox, count(*) FROM flags GROUP BY mailbox").fetchall()
        return {key: int(n) for key, n in rows}

    # --- OAuth2 refresh tokens ----------------------------------------------------------------------------------

    @_errors
    def read_refresh_token(self, mailbox_id: str) -> str | None:
        """The newest refresh token stored for ``mailbox_id`` (as stored: the caller encrypts), or None."""
        row = self._conn().execute("SELECT token FROM oauth_tokens WHERE mailbox_id = ?", (mailbox_id,)).fetchone()
        return None if row is None else str(row[0])

    @_errors
    def write_refresh_token(self, mailbox_id: str, token: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO oauth_tokens (mailbox_id, token, updated_at) VALUES (?, ?, ?) ON CONFLICT "
                         "(mailbox_id) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at",
                         (mailbox_id, token, time.time()))

    @contextmanager
    def refresh_lock(self, mailbox_id: str, ttl_seconds: float = REFRESH_LOCK_TTL_SECONDS,
                     wait_seconds: float = REFRESH_LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Exclude every other refresh of ``mailbox_id`` on this host: a per-mailbox lock in this process, then an
        ``fcntl`` lock on ``oauth-<mailbox_id>.lock`` beside the database for the other processes (released by the
        kernel if this one dies, so ``ttl_seconds`` is not needed here). ``StateStoreError`` after ``wait_seconds``."""
        import fcntl

        deadline = time.monotonic() + wait_seconds
        with self._all_lock:
            local = self._refresh_locks.setdefault(mailbox_id, threading.Lock())
        if not local.acquire(timeout=max(0.0, wait_seconds)):
            raise StateStoreError(f"the refresh lock of mailbox {mailbox_id} is busy")
        try:
            path = os.path.join(os.path.dirname(os.path.abspath(self.path)), f"oauth-{mailbox_id}.lock")
            with open(path, "a+") as handle:
                while True:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise StateStoreError(f"the refresh lock of mailbox {mailbox_id} is busy") from None
                        time.sleep(0.05)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except OSError as exc:
            raise StateStoreError(f"the refresh lock of mailbox {mailbox_id} failed: {exc}") from exc
        finally:
            local.release()

    @_errors
    def queue_flag(self, mailbox: str, uidvalidity: int, uid: int, message_id: str | None) -> None:
        with self._write() as conn:
            conn.execute(_FLAG_INSERT, (mailbox, int(uidvalidity), int(uid), message_id, time.time()))

    @_errors
    def pending_flags(self, mailbox: str, limit: int) -> list[FlagRequest]:
        rows = self._conn().execute(
            "SELECT uidvalidity, uid, message_id, requested_at FROM flags WHERE mailbox = ? "
            "ORDER BY requested_at LIMIT ?", (mailbox, max(0, int(limit)))).fetchall()
        return [FlagRequest(mailbox, int(v), int(u), m, float(at)) for v, u, m, at in rows]

    @_errors
    def clear_flag(self, request: FlagRequest) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM flags WHERE mailbox = ? AND uidvalidity = ? AND uid = ?",
                         (request.mailbox, int(request.uidvalidity), int(request.uid)))

    # --- fetch retries, flag failures, identities (issue 15) -------------------------------------------------

    @_errors
    def flag_failed(self, request: FlagRequest) -> int:
        """Count one failed application of ``request``; returns its failures so far (0 if it is gone)."""
        with self._write() as conn:
            row = conn.execute("UPDATE flags SET failures = failures + 1 WHERE mailbox = ? AND uidvalidity = ? "
                               "AND uid = ? RETURNING failures",
                               (request.mailbox, int(request.uidvalidity), int(request.uid))).fetchone()
        return 0 if row is None else int(row[0])

    @_errors
    def record_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int, error: str) -> int:
        """Count one failed fetch of a UID (durably, across sessions); returns its failures so far."""
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO fetch_failures (mailbox, uidvalidity, uid, failures, last_error, updated_at) "
                "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (mailbox, uidvalidity, uid) DO UPDATE SET "
                "failures = failures + 1, last_error = excluded.last_error, updated_at = excluded.updated_at "
                "RETURNING failures", (mailbox, int(uidvalidity), int(uid), bounded(error), time.time())).fetchone()
        return int(row[0])

    @_errors
    def fetch_retries(self, mailbox: str, uidvalidity: int, limit: int) -> list[tuple[int, int]]:
        """The UIDs of the retry set, lowest first, with their failures so far."""
        rows = self._conn().execute(
            "SELECT uid, failures FROM fetch_failures WHERE mailbox = ? AND uidvalidity = ? ORDER BY uid LIMIT ?",
            (mailbox, int(uidvalidity), max(0, int(limit)))).fetchall()
        return [(int(uid), int(failures)) for uid, failures in rows]

    @_errors
    def clear_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM fetch_failures WHERE mailbox = ? AND uidvalidity = ? AND uid = ?",
                         (mailbox, int(uidvalidity), int(uid)))

    @_errors
    def remember_identity(self, email_id: str, fingerprint: str, uidvalidity: int, uid: int) -> None:
        """Record the fingerprint and origin of the first email seen under ``email_id`` (kept as done records)."""
        with self._write() as conn:
            conn.execute("INSERT INTO identities (email_id, fingerprint, uidvalidity, uid, expires_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (email_id) DO NOTHING",
                         (email_id, fingerprint, int(uidvalidity), int(uid), self._expires(time.time())))

    @_errors
    def get_identity(self, email_id: str) -> dict | None:
        row = self._conn().execute("SELECT fingerprint, uidvalidity, uid FROM identities WHERE email_id = ? "
                                   "AND expires_at > ?", (email_id, time.time())).fetchone()
        return None if row is None else {"fingerprint": row[0], "uidvalidity": int(row[1]), "uid": int(row[2])}

    # --- parked emails (issue 15) ------------------------------------------------------------------------------

    @_errors
    def park(self, parked: ParkedEmail) -> None:
        """Record (or re-record, with its new reason) an email that could not reach an end state."""
        at = parked.parked_at or time.time()
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO parked ({', '.join(_PARKED_COLUMNS)}, expires_at) "
                f"VALUES ({', '.join('?' for _ in _PARKED_COLUMNS)}, ?) ON CONFLICT (parked_id) DO UPDATE SET "
                "reason = excluded.reason, detail = excluded.detail, parked_at = excluded.parked_at, "
                "email_id = coalesce(excluded.email_id, email_id), subject = coalesce(excluded.subject, subject), "
                "message_id = coalesce(excluded.message_id, message_id), replay_requested_at = NULL, "
                "expires_at = excluded.expires_at",
                (*_parked_values(replace(parked, parked_at=at, replay_requested_at=None)), self._expires(at)))

    @_errors
    def get_parked(self, parked_id: str) -> ParkedEmail | None:
        row = self._conn().execute(f"SELECT {', '.join(_PARKED_COLUMNS)} FROM parked WHERE parked_id = ? "
                                   "AND expires_at > ?", (parked_id, time.time())).fetchone()
        return None if row is None else ParkedEmail(*row)

    @_errors
    def list_parked(self, limit: int = 20) -> list[ParkedEmail]:
        """Newest first."""
        rows = self._conn().execute(f"SELECT {', '.join(_PARKED_COLUMNS)} FROM parked WHERE expires_at > ? "
                                    "ORDER BY parked_at DESC LIMIT ?", (time.time(), max(0, int(limit)))).fetchall()
        return [ParkedEmail(*row) for row in rows]

    @_errors
    def parked_count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM parked WHERE expires_at > ?",
                                        (time.time(),)).fetchone()[0])

    @_errors
    def request_replay(self, parked_id: str | None = None, now: float | None = None, *,
                       since: float | None = None) -> int:
        """Ask the mailbox's lease holder to re-run the pipeline on one parked email (or all, or those parked at or
        after ``since``); returns how many."""
        at = now_or_clock(now)
        query = "UPDATE parked SET replay_requested_at = ?, replay_refused = NULL WHERE expires_at > ?"
        params: tuple = (at, time.time())
        if parked_id is not None:
            query += " AND parked_id = ?"
            params += (parked_id,)
        if since is not None:
            query += " AND parked_at >= ?"
            params += (float(since),)
        with self._write() as conn:
            return conn.execute(query, params).rowcount

    @_errors
    def replay_requests(self, mailbox_id: str, limit: int) -> list[ParkedEmail]:
        rows = self._conn().execute(
            f"SELECT {', '.join(_PARKED_COLUMNS)} FROM parked WHERE mailbox_id = ? AND replay_requested_at IS NOT NULL "
            "ORDER BY replay_requested_at LIMIT ?", (mailbox_id, max(0, int(limit)))).fetchall()
        return [ParkedEmail(*row) for row in rows]

    @_errors
    def unpark(self, parked_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM parked WHERE parked_id = ?", (parked_id,))

    @_errors
    def refuse_replay(self, parked_id: str, why: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE parked SET replay_requested_at = NULL, replay_refused = ? WHERE parked_id = ?",
                         (bounded(why), parked_id))

    # --- R2 reuse ----------------------------------------------------------------------------------------------

    @staticmethod
    def _r2_key(source_url: str) -> str:
        return hashlib.sha256(source_url.encode("utf-8")).hexdigest()

    @_errors
    def get_r2_copy(self, source_url: str) -> dict | None:
        row = self._conn().execute("SELECT record FROM r2_copies WHERE url_hash = ? AND expires_at > ?",
                                   (self._r2_key(source_url), time.time())).fetchone()
        return None if row is None else json.loads(row[0])

    @_errors
    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO r2_copies (url_hash, record, expires_at) VALUES (?, ?, ?)",
                         (self._r2_key(source_url), dumps(record), time.time() + ttl_seconds))

    # --- counters ----------------------------------------------------------------------------------------------

    @_errors
    def incr(self, name: str, amount: int = 1, label: str | None = None,
             labels: Mapping[str, str] | None = None) -> None:
        check_counter_name(name)
        part = counter_label_part(counter_labels(label, labels))
        with self._write() as conn:
            conn.execute(_COUNTER_UPSERT, (name, 1 if part else 0, part, int(amount)))

    @_errors
    def counter_series(self) -> list[tuple[str, dict[str, str], int]]:
        """Every counter with its labels (``services.state_store.counter_label_part`` is the key format)."""
        rows = self._conn().execute("SELECT name, labelled, label, value FROM counters").fetchall()
        return [(name, parse_label_part(label) if labelled else {}, int(value))
                for name, labelled, label, value in rows]

    def counters(self) -> dict[str, int | dict[str, int]]:
        return fold_series(self.counter_series())

    # --- status and recent history -----------------------------------------------------------------------------

    @_errors
    def publish_status(self, doc: dict, ttl_seconds: float) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO status (id, doc, expires_at) VALUES (1, ?, ?)",
                         (dumps({**doc, "published_at": now}), now + ttl_seconds))

    @_errors
    def publish_mailbox_status(self, mailbox_id: str, doc: dict, ttl_seconds: float) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO mailbox_status (mailbox_id, doc, expires_at) VALUES (?, ?, ?)",
                         (mailbox_id, dumps({**doc, "published_at": now}), now + ttl_seconds))

    @_errors
    def read_mailbox_statuses(self, mailbox_ids: Sequence[str]) -> dict[str, dict]:
        rows = self._conn().execute("SELECT mailbox_id, doc FROM mailbox_status WHERE expires_at > ?",
                                    (time.time(),)).fetchall()
        wanted = set(mailbox_ids)
        return {mailbox_id: json.loads(doc) for mailbox_id, doc in rows if mailbox_id in wanted}

    @_errors
    def target_stats(self, now: float) -> dict[str, dict]:
        """Per target: pending (not held), held, the oldest pending age, the oldest due item's due time and
        scheduled delay (as ``outbox_stats``), dead letters within the retention."""
        with self._read() as conn:
            return self._target_stats(conn, now)

    @_errors
    def outbox_breakdown(self, now: float) -> dict[str, dict]:
        """``target_stats(now)`` as "targets" and ``pending_owners()["mailboxes"]`` as "mailboxes", read in one
        snapshot."""
        with self._read() as conn:
            return {"targets": self._target_stats(conn, now), "mailboxes": self._pending_counts(conn, "mailbox_id")}

    def _target_stats(self, conn: sqlite3.Connection, now: float) -> dict[str, dict]:
        cutoff = now - self._retention
        stats: dict[str, dict] = {}
        for target_id, pending, held, oldest in conn.execute(
                "SELECT target_id, coalesce(sum(held_until IS NULL OR held_until <= ?), 0), "
                "coalesce(sum(held_until > ?), 0), min(CASE WHEN held_until IS NULL OR held_until <= ? "
                "THEN pending_since END) FROM outbox WHERE status IN ('pending', 'enriching') GROUP BY target_id",
                (now, now, now)):
            stats[target_id] = {"pending": int(pending), "held": int(held), "dead": 0,
                                "oldest_pending_age_s": None if oldest is None else max(0.0, now - oldest),
                                **_NO_DUE_ITEM}
        for target_id, *due in conn.execute(
                f"SELECT target_id, {_DUE_COLUMNS} FROM (SELECT target_id, {_DUE_COLUMNS}, row_number() OVER "
                f"(PARTITION BY target_id ORDER BY due_at) AS n FROM outbox WHERE {_DUE}) WHERE n = 1", (now,)):
            stats[target_id].update(_due_fields(*due))
        for target_id, dead in conn.execute("SELECT target_id, count(*) FROM outbox WHERE status = 'dead' "
                                            "AND dead_at > ? GROUP BY target_id", (cutoff,)):
            stats.setdefault(target_id, {"pending": 0, "held": 0, "oldest_pending_age_s": None,
                                         **_NO_DUE_ITEM})["dead"] = dead
        return stats

    @_errors
    def read_status(self) -> dict | None:
        row = self._conn().execute("SELECT doc FROM status WHERE id = 1 AND expires_at > ?",
                                   (time.time(),)).fetchone()
        return None if row is None else json.loads(row[0])

    @_errors
    def record_recent(self, entry: dict) -> None:
        with self._write() as conn:
            cursor = conn.execute("INSERT INTO recent (at, entry) VALUES (?, ?)", (time.time(), dumps(entry)))
            conn.execute("DELETE FROM recent WHERE id <= ?", ((cursor.lastrowid or 0) - RECENT_KEEP,))

    @_errors
    def recent(self, limit: int = 20) -> list[dict]:
        rows = self._conn().execute("SELECT entry FROM recent WHERE at > ? ORDER BY id DESC LIMIT ?",
                                    (time.time() - self._retention, max(0, min(int(limit), RECENT_KEEP)))).fetchall()
        return [json.loads(row[0]) for row in rows]

    # --- retention ---------------------------------------------------------------------------------------------

    @_errors
    def trim(self, now: float) -> None:
        """Delete what expired: finished items, done-records, flag requests, R2 records, status, history."""
        cutoff = now - self._retention
        with self._write() as conn:
            conn.execute("DELETE FROM outbox WHERE expires_at IS NOT NULL AND expires_at <= ? AND status IN "
                         "('delivered', 'dead')",
                         (now,))
            conn.execute("DELETE FROM done WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM flags WHERE requested_at <= ?", (cutoff,))
            conn.execute("DELETE FROM r2_copies WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM status WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM recent WHERE at <= ?", (cutoff,))
            conn.execute("DELETE FROM parked WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM identities WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM fetch_failures WHERE updated_at <= ?", (cutoff,))
            conn.execute("DELETE FROM actions WHERE at <= ?", (now - ACTIONS_TTL_SECONDS,))
            conn.execute("DELETE FROM hits WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM records WHERE expires_at <= ?", (now,))

    def close(self) -> None:
        """Close every connection this process opened (from any thread); the store is unusable afterwards."""
        self._closed = True
        pid = os.getpid()
        with self._all_lock:
            connections, self._all = self._all, []
        for owner_pid, _, conn in connections:
            if owner_pid == pid:
                try:
                    conn.close()
                except sqlite3.Error:  # closing must not fail a shutdown
                    logger.debug("sqlite close failed", exc_info=True)

"""All persistent state of render-signal behind one interface: a Redis backend and a SQLite backend.

The store owns the IMAP checkpoints, the done-records of emails, the webhook outbox (with dead letters), the IMAP
flag requests, the R2 reuse records, the cluster-wide counters, the published status and the recent history. No
other module talks to Redis or SQLite for these things. ``open_state_store(settings)`` picks Redis when
``REDIS_URL`` is set (``services/state_store_redis.py``, key layout documented there) and a SQLite file
``$STATE_DIR/state.sqlite3`` otherwise (``services/state_store_sqlite.py``). ``StateStoreError`` is the only
exception that leaves these modules (a ``ValueError`` only for a programming error such as an unknown status).

Retention (``STATE_RETENTION_DAYS``): delivered and dead outbox items, done-records, flag requests and recent
history are dropped after that long; R2 reuse records and the status document after their own TTL. Pending items
and checkpoints never expire. Redis expires keys by itself (``trim`` drops its index entries); SQLite deletes in
``trim(now)``. The lease holder's housekeeping schedule runs ``trim`` (at start, then hourly). Operator state
(issue 20): paused targets never expire; the action history keeps ``ACTIONS_KEEP`` entries of at most
``ACTIONS_TTL_SECONDS``; ``hit`` counters live for their window; records (``put_record``) for their own TTL.

The schema's versions and migration steps are in ``services/state_migrations.py``; a store brings itself to the
current version (additive steps only) when opened (SQLite) or on its first write (Redis). An item of uid 0
(``process-email``) came from no IMAP message and queues no flag request when it is done.
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

from config import DEFAULT_ID
from settings import Settings

RECENT_KEEP = 100           # record_recent keeps this many entries (newest first)
EXCERPT_MAX_CHARS = 500     # dead-letter response excerpts and last_error are cut to this
DEAD_RECENT_COUNT = 5       # outbox_stats()["dead_recent"] lists this many
ATTEMPT_LOG_KEEP = 20       # attempts kept per outbox item (time, status or error, duration)
ACTIONS_KEEP = 1000         # record_action keeps this many operator actions (newest first) …
ACTIONS_TTL_SECONDS = 30 * 86400.0   # … each for at most this long


class OutboxStatus(StrEnum):
    """Where an outbox item is (``OutboxItem.status``, ``list_items(status)``); the values are stored as they are."""

    PENDING = "pending"
    ENRICHING = "enriching"   # queued, waiting for the R2 copies of its links: not claimable, counted as pending
    DELIVERED = "delivered"
    DEAD = "dead"


OUTBOX_STATUSES: tuple[OutboxStatus, ...] = tuple(OutboxStatus)


class StateStoreError(Exception):
    """The state store could not do what was asked (backend unreachable, timed out, locked, unwritable)."""


class StaleFence(StateStoreError):
    """A write fenced with a mailbox lease's epoch was refused: a later holder of that lease has a newer epoch."""


# A fence: (mailbox id, the epoch its lease holder was given by ``advance_epoch``). Claims, enqueues and checkpoint
# moves carry it; the store refuses one whose epoch is older than the mailbox's current epoch (``StaleFence``).
Fence = tuple[str, int]


@dataclass
class OutboxItem:
    event_id: str            # the webhook-id: "msg_<email_id>" (target default) or "msg_<email_id>_<target_id>"
    email_id: str
    payload: dict            # the webhook body
    mailbox: str             # the state key of its mailbox (where its flag request goes): MailboxConfig.state_key
    uidvalidity: int
    uid: int
    message_id: str | None
    status: str = OutboxStatus.PENDING  # an OutboxStatus (read back from a store as its plain value)
    attempts: int = 0        # incremented by every claim (a claim is the start of an attempt)
    next_attempt_at: float = 0.0   # epoch seconds
    created_at: float = 0.0
    first_attempt_at: float | None = None
    last_error: str | None = None
    last_status: int | None = None
    dead_reason: str | None = None
    response_excerpt: str | None = None
    delivered_at: float | None = None
    in_flight: bool = False        # an attempt was started and its outcome not recorded yet
    dead_at: float | None = None
    claimed_until: float | None = None
    claim_owner: str | None = None
    mailbox_id: str = DEFAULT_ID   # the mailbox it came from (process-email: default)
    target_id: str = DEFAULT_ID    # the target it is delivered to
    attempt_log: list[dict] = field(default_factory=list)  # the last ATTEMPT_LOG_KEEP attempts, oldest first
    held_until: float | None = None  # held outside its target's delivery window until then (not a backlog)


@dataclass(frozen=True)
class FlagRequest:
    """An IMAP acknowledgement the poller still has to apply (``\\Seen $RenderSignalDone``)."""

    mailbox: str
    uidvalidity: int
    uid: int
    message_id: str | None
    requested_at: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class ParkedEmail:
    """An email the pipeline could not bring to an end state: kept (not in the outbox, no done record, not flagged
    done on the server) until a replay re-runs the pipeline on it. Addressed ``<mailbox_id>:<uidvalidity>:<uid>``."""

    parked_id: str
    mailbox_id: str
    mailbox: str                    # the mailbox's state key
    uidvalidity: int
    uid: int
    reason: str
    email_id: str | None = None
    message_id: str | None = None
    subject: str | None = None
    detail: str | None = None
    parked_at: float = 0.0
    replay_requested_at: float | None = None
    replay_refused: str | None = None   # why the last replay could not be carried out


REFRESH_LOCK_TTL_SECONDS = 60.0    # one token refresh holds a mailbox's refresh lock at most this long
REFRESH_LOCK_WAIT_SECONDS = 30.0   # … and another waits this long for it before giving up (a StateStoreError)


@runtime_checkable
class StateStore(Protocol):
    backend: str  # "redis" | "sqlite"

    def ping(self) -> None: ...
    def get_checkpoint(self, mailbox: str, uidvalidity: int) -> int | None: ...
    def set_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int, *, fence: Fence | None = None) -> None: ...
    def advance_epoch(self, mailbox_id: str) -> int: ...
    def has_any_checkpoint(self, mailbox: str) -> bool: ...
    def get_done(self, email_id: str) -> str | None: ...
    def mark_done(self, email_id: str, outcome: str) -> None: ...
    def enqueue(self, item: OutboxItem) -> bool: ...
    def enqueue_all(self, items: Sequence[OutboxItem], *, fence: Fence | None = None) -> list[bool]: ...
    def finish_enrichment(self, event_id: str, payload: dict, now: float) -> bool: ...
    def claim_due(self, owner: str, now: float, limit: int, claim_seconds: float, *,
                  mailbox_id: str | None = None, target_id: str | None = None,
                  fence: Fence | None = None) -> list[OutboxItem]: ...
    def mark_delivered(self, event_id: str, status: int, now: float, attempt: dict | None = None, *,
                       fence: Fence | None = None) -> bool: ...
    def reschedule(self, event_id: str, next_attempt_at: float, error: str, status: int | None,
                   attempt: dict | None = None) -> bool: ...
    def dead_letter(self, event_id: str, reason: str, status: int | None, excerpt: str | None,
                    now: float | None = None, attempt: dict | None = None) -> bool: ...
    def get_item(self, event_id: str) -> OutboxItem | None: ...
    def list_items(self, status: str, limit: int = 100) -> list[OutboxItem]: ...
    def replay(self, event_id: str | None = None, now: float | None = None, *, since: float | None = None,
               target_id: str | None = None) -> int: ...
    def items_for_email(self, email_id: str) -> list[OutboxItem]: ...
    def pause_target(self, target_id: str, now: float) -> bool: ...
    def resume_target(self, target_id: str) -> bool: ...
    def paused_targets(self) -> dict[str, float]: ...
    def record_action(self, entry: dict, now: float) -> None: ...
    def actions(self, limit: int = 50) -> list[dict]: ...
    def hit(self, key: str, window_seconds: float, now: float) -> int: ...
    def get_record(self, namespace: str, key: str) -> dict | None: ...
    def put_record(self, namespace: str, key: str, record: dict, ttl_seconds: float) -> None: ...
    def compare_and_put_record(self, namespace: str, key: str, expected: dict | None, record: dict,
                               ttl_seconds: float) -> bool: ...
    def outbox_stats(self, now: float) -> dict: ...
    def queue_flag(self, mailbox: str, uidvalidity: int, uid: int, message_id: str | None) -> None: ...
    def pending_flags(self, mailbox: str, limit: int) -> list[FlagRequest]: ...
    def clear_flag(self, request: FlagRequest) -> None: ...
    def get_r2_copy(self, source_url: str) -> dict | None: ...
    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None: ...
    def incr(self, name: str, amount: int = 1, label: str | None = None,
             labels: Mapping[str, str] | None = None) -> None: ...
    def counters(self) -> dict[str, int | dict[str, int]]: ...
    def counter_series(self) -> list[tuple[str, dict[str, str], int]]: ...
    def publish_status(self, doc: dict, ttl_seconds: float) -> None: ...
    def publish_mailbox_status(self, mailbox_id: str, doc: dict, ttl_seconds: float) -> None: ...
    def read_mailbox_statuses(self, mailbox_ids: Sequence[str]) -> dict[str, dict]: ...
    def target_stats(self, now: float) -> dict[str, dict]: ...
    def outbox_breakdown(self, now: float) -> dict[str, dict]: ...
    def read_status(self) -> dict | None: ...
    def record_recent(self, entry: dict) -> None: ...
    def recent(self, limit: int = 20) -> list[dict]: ...
    def trim(self, now: float) -> None: ...
    def schema_version(self) -> int: ...
    def release_claim(self, event_id: str) -> bool: ...
    def hold(self, event_id: str, until: float, now: float) -> bool: ...
    def flag_failed(self, request: FlagRequest) -> int: ...
    def record_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int, error: str) -> int: ...
    def fetch_retries(self, mailbox: str, uidvalidity: int, limit: int) -> list[tuple[int, int]]: ...
    def clear_fetch_failure(self, mailbox: str, uidvalidity: int, uid: int) -> None: ...
    def remember_identity(self, email_id: str, fingerprint: str, uidvalidity: int, uid: int) -> None: ...
    def get_identity(self, email_id: str) -> dict | None: ...
    def park(self, parked: ParkedEmail) -> None: ...
    def get_parked(self, parked_id: str) -> ParkedEmail | None: ...
    def list_parked(self, limit: int = 20) -> list[ParkedEmail]: ...
    def parked_count(self) -> int: ...
    def request_replay(self, parked_id: str | None = None, now: float | None = None, *,
                       since: float | None = None) -> int: ...
    def replay_requests(self, mailbox_id: str, limit: int) -> list[ParkedEmail]: ...
    def unpark(self, parked_id: str) -> None: ...
    def refuse_replay(self, parked_id: str, why: str) -> None: ...
    def pending_owners(self) -> dict[str, dict[str, int]]: ...
    def flag_keys(self) -> dict[str, int]: ...
    def read_refresh_token(self, mailbox_id: str) -> str | None: ...
    def write_refresh_token(self, mailbox_id: str, token: str) -> None: ...
    def refresh_lock(self, mailbox_id: str, ttl_seconds: float = ...,
                     wait_seconds: float = ...) -> ContextManager[None]: ...
    def close(self) -> None: ...


def open_state_store(settings: Settings, redis_client: Any = None) -> StateStore:
    """Redis backend when ``settings.redis_url`` is set (reusing ``redis_client`` if given), SQLite otherwise.

    Opening SQLite creates the directory and schema (may raise ``StateStoreError``); opening Redis does no I/O.
    """
    retention = retention_seconds(settings)
    if settings.redis_url:
        from services.state_store_redis import RedisStateStore

        if redis_client is None:
            from services.redis_client import make_redis_client

            return RedisStateStore(make_redis_client(settings), retention_seconds=retention, owns_client=True)
        return RedisStateStore(redis_client, retention_seconds=retention, owns_client=False)
    from services.state_store_sqlite import SqliteStateStore, state_db_path

    return SqliteStateStore(state_db_path(settings), retention_seconds=retention)


def retention_seconds(settings: Settings) -> float:
    return float(settings.state_retention_days) * 86400.0


# --- helpers shared by both backends -----------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def translating(*error_types: type[BaseException]) -> Callable[[F], F]:
    """Decorator: re-raise the backend's own errors as ``StateStoreError`` naming the operation."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except StateStoreError:
                raise
            except error_types as exc:
                raise StateStoreError(f"{self.backend} {method.__name__}: {type(exc).__name__}: {exc}") from exc

        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature; mypy sees Any -> Any

    return decorate


def bounded(text: str | None, limit: int = EXCERPT_MAX_CHARS) -> str | None:
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit]


def now_or_clock(now: float | None) -> float:
    return time.time() if now is None else float(now)


def queued_status(item: OutboxItem) -> str:
    """The status ``enqueue`` stores: ``enriching`` when the item says so, else ``pending``."""
    return OutboxStatus.ENRICHING if item.status == OutboxStatus.ENRICHING else OutboxStatus.PENDING


def check_status(status: str) -> None:
    if status not in OUTBOX_STATUSES:
        raise ValueError(f"unknown outbox status {status!r}")


LABEL_NAME = re.compile(r"[a-z][a-z_]{0,31}")
LABEL_VALUE = re.compile(r"[^,=\r\n]{0,200}")  # may hold spaces and ':'


def check_counter_name(name: str) -> None:
    # ':' separates name and labels in a counter key.
    if not name or ":" in name:
        raise ValueError(f"bad counter name {name!r}")


def counter_labels(label: str | None, labels: Mapping[str, str] | None) -> dict[str, str]:
    """``incr``'s labels: ``labels`` plus ``label`` as the ``reason`` (the one label every release had)."""
    merged = dict(labels or {})
    if label is not None:
        merged["reason"] = label
    for key, value in merged.items():
        if not LABEL_NAME.fullmatch(key) or not LABEL_VALUE.fullmatch(str(value)):
            raise ValueError(f"bad counter label {key}={value!r}")
    return {key: str(value) for key, value in merged.items()}


def counter_label_part(labels: Mapping[str, str]) -> str:
    """The pinned key format of a counter's labels: ``k=v`` pairs joined by ``,``, sorted by label name ('' for
    none). A counter's key is ``<name>`` or ``<name>:<label part>`` (the Redis hash field; SQLite's columns)."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def parse_label_part(part: str) -> dict[str, str]:
    """The inverse of ``counter_label_part``. A part without ``=`` was written by schema version 1, whose only
    label was the reason."""
    if not part:
        return {}
    if "=" not in part:
        return {"reason": part}
    return dict(pair.split("=", 1) for pair in part.split(","))


def fold_series(series: list[tuple[str, dict[str, str], int]]) -> dict[str, int | dict[str, int]]:
    """The counters by reason only (summed over every other label): ``{name: int}`` or ``{name: {reason: int}}``.

    A name should be either counted with a reason or without; if both were, the one without is under reason "".
    """
    result: dict[str, Any] = {}
    for name, labels, value in sorted(series, key=lambda row: "reason" in row[1]):
        reason = labels.get("reason")
        current = result.get(name)
        if reason is None:
            if isinstance(current, dict):
                current[""] = current.get("", 0) + int(value)
            else:
                result[name] = (current or 0) + int(value)
            continue
        if not isinstance(current, dict):
            current = {} if current is None else {"": current}
            result[name] = current
        current[reason] = current.get(reason, 0) + int(value)
    return result


def appended_log(log: list[dict], attempt: dict | None) -> list[dict]:
    """``log`` with ``attempt`` added, the oldest dropped beyond ATTEMPT_LOG_KEEP."""
    if attempt is None:
        return log
    return [*log, attempt][-ATTEMPT_LOG_KEEP:]


def hit_window(window_seconds: float, now: float) -> int:
    """The index of the fixed window of ``window_seconds`` that contains ``now`` (``hit``'s counter key)."""
    if window_seconds <= 0:
        raise ValueError(f"bad window {window_seconds!r}")
    return int(float(now) // float(window_seconds))


def check_record_address(namespace: str, key: str) -> None:
    # ':' separates namespace and key in a record's Redis key.
    if not namespace or ":" in namespace or not key:
        raise ValueError(f"bad record address {namespace!r}/{key!r}")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)

"""All persistent state of render-signal behind one interface: a Redis backend and a SQLite backend.

The store owns the IMAP checkpoints, the done-records of emails, the webhook outbox (with dead letters), the IMAP
flag requests, the R2 reuse records, the cluster-wide counters, the published status and the recent history. No
other module talks to Redis or SQLite for these things. ``open_state_store(settings)`` picks Redis when
``REDIS_URL`` is set (``services/state_store_redis.py``, key layout documented there) and a SQLite file
``$STATE_DIR/state.sqlite3`` otherwise (``services/state_store_sqlite.py``). ``StateStoreError`` is the only
exception that leaves these modules (a ``ValueError`` only for a programming error such as an unknown status).

Retention (``STATE_RETENTION_DAYS``): delivered and dead outbox items, done-records, flag requests and recent
history are dropped after that long; R2 reuse records and the status document after their own TTL. Pending items
and checkpoints never expire. Redis expires keys by itself; SQLite deletes in ``trim(now)``, which the store also
runs by itself from ``claim_due`` at most every ``AUTO_TRIM_INTERVAL_SECONDS``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

from settings import Settings

RECENT_KEEP = 100           # record_recent keeps this many entries (newest first)
EXCERPT_MAX_CHARS = 500     # dead-letter response excerpts and last_error are cut to this
DEAD_RECENT_COUNT = 5       # outbox_stats()["dead_recent"] lists this many
AUTO_TRIM_INTERVAL_SECONDS = 600.0


class OutboxStatus(StrEnum):
    """Where an outbox item is (``OutboxItem.status``, ``list_items(status)``); the values are stored as they are."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


OUTBOX_STATUSES: tuple[OutboxStatus, ...] = tuple(OutboxStatus)


class StateStoreError(Exception):
    """The state store could not do what was asked (backend unreachable, timed out, locked, unwritable)."""


@dataclass
class OutboxItem:
    event_id: str            # "msg_" + email_id; the webhook-id
    email_id: str
    payload: dict            # the webhook body
    mailbox: str
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


@dataclass(frozen=True)
class FlagRequest:
    """An IMAP acknowledgement the poller still has to apply (``\\Seen $RenderSignalDone``)."""

    mailbox: str
    uidvalidity: int
    uid: int
    message_id: str | None
    requested_at: float = field(default=0.0, compare=False)


@runtime_checkable
class StateStore(Protocol):
    backend: str  # "redis" | "sqlite"

    def ping(self) -> None: ...
    def get_checkpoint(self, mailbox: str, uidvalidity: int) -> int | None: ...
    def set_checkpoint(self, mailbox: str, uidvalidity: int, last_uid: int) -> None: ...
    def has_any_checkpoint(self, mailbox: str) -> bool: ...
    def get_done(self, email_id: str) -> str | None: ...
    def mark_done(self, email_id: str, outcome: str) -> None: ...
    def enqueue(self, item: OutboxItem) -> bool: ...
    def claim_due(self, owner: str, now: float, limit: int, claim_seconds: float) -> list[OutboxItem]: ...
    def mark_delivered(self, event_id: str, status: int, now: float) -> bool: ...
    def reschedule(self, event_id: str, next_attempt_at: float, error: str, status: int | None) -> bool: ...
    def dead_letter(self, event_id: str, reason: str, status: int | None, excerpt: str | None,
                    now: float | None = None) -> bool: ...
    def get_item(self, event_id: str) -> OutboxItem | None: ...
    def list_items(self, status: str, limit: int = 100) -> list[OutboxItem]: ...
    def replay(self, event_id: str | None = None, now: float | None = None) -> int: ...
    def outbox_stats(self, now: float) -> dict: ...
    def queue_flag(self, mailbox: str, uidvalidity: int, uid: int, message_id: str | None) -> None: ...
    def pending_flags(self, mailbox: str, limit: int) -> list[FlagRequest]: ...
    def clear_flag(self, request: FlagRequest) -> None: ...
    def get_r2_copy(self, source_url: str) -> dict | None: ...
    def put_r2_copy(self, source_url: str, record: dict, ttl_seconds: float) -> None: ...
    def incr(self, name: str, amount: int = 1, label: str | None = None) -> None: ...
    def counters(self) -> dict[str, int | dict[str, int]]: ...
    def publish_status(self, doc: dict, ttl_seconds: float) -> None: ...
    def read_status(self) -> dict | None: ...
    def record_recent(self, entry: dict) -> None: ...
    def recent(self, limit: int = 20) -> list[dict]: ...
    def trim(self, now: float) -> None: ...
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


def check_status(status: str) -> None:
    if status not in OUTBOX_STATUSES:
        raise ValueError(f"unknown outbox status {status!r}")


def check_counter_name(name: str) -> None:
    # ':' separates name and label in the Redis counters hash.
    if not name or ":" in name:
        raise ValueError(f"bad counter name {name!r}")


def fold_counters(rows: list[tuple[str, str | None, int]]) -> dict[str, int | dict[str, int]]:
    """(name, label or None, value) rows → {name: int} or {name: {label: int}}.

    A name should be either labelled or not; if both were used, the unlabelled value appears under label "".
    """
    result: dict[str, Any] = {}
    for name, label, value in sorted(rows, key=lambda row: row[1] is not None):
        if label is None:
            result[name] = int(value)
            continue
        current = result.get(name)
        if not isinstance(current, dict):
            current = {} if current is None else {"": current}
            result[name] = current
        current[label] = int(value)
    return result


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)

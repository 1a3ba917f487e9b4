"""The poller lease: at most one process of the whole deployment touches the mailbox at any moment.

With ``REDIS_URL`` the lease is the Redis key ``render_signal:poller_lock`` (set-if-absent with a TTL, renewed by
a token-checked extend, released by a token-checked delete); without it, an ``fcntl.flock`` on a file under the state
directory (safe only inside one container). ``LeaseKeeper`` is the thread body that acquires, renews and notices
loss; the poller and delivery threads check ``holds_locally()`` (a monotonic deadline, no I/O) before every IMAP
command and ``verify()`` (one GET) before each batch, flag STORE and webhook attempt. Every failure is reported as
``LeaseLost`` (``LeaseStoreUnreachable`` when Redis cannot be reached); no redis-py exception leaves this module.
After a failed Redis call every thread waits out one shared, jittered, capped exponential backoff
(``backoff_remaining()``) before asking again. An outage is logged once (``report_outage()``, by the first thread
that waits on it: the keeper or ``wait_for_ownership``), and its end once, by the first call that succeeds again.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import secrets
import socket
import threading
import time
from enum import StrEnum
from typing import Any, Callable, Protocol

from config import DEFAULT_ID
from timestamps import iso_utc_ms

logger = logging.getLogger(__name__)

LEASE_KEY = "render_signal:poller_lock"
FILE_LOCK_WARNING = "Using file-based lock (unsafe for multi-container deployments)"
# The first pause after Redis was found unreachable; it doubles per failed call up to the lease's cap.
OUTAGE_BACKOFF_BASE_SECONDS = 0.5

_file_warning_lock = threading.Lock()
_file_warning_logged = False


class LeaseLost(Exception):
    """This process does not (or can no longer prove that it does) hold the poller lease."""


class LeaseStoreUnreachable(LeaseLost):
    """Redis could not be reached (timeout, refused, error reply): ownership is unproven, not known lost."""


class LeaseState(StrEnum):
    """What a lease reports about itself (``snapshot()["state"]``, /health ``checks.lease``)."""

    HELD = "held"
    STANDBY = "standby"
    REDIS_UNREACHABLE = "redis_unreachable"


class Lease(Protocol):
    """The poller lease, whichever backend holds it (``RedisLease`` or ``FileLease``; ``make_lease`` picks)."""

    backend: str
    ttl_seconds: float
    last_loss_reason: str | None

    @property
    def token(self) -> str: ...

    @property
    def is_held(self) -> bool: ...

    @property
    def unreachable(self) -> bool: ...

    @property
    def losses(self) -> int: ...

    def try_acquire(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...

    def holds_locally(self) -> bool: ...

    def verify(self) -> None: ...

    def backoff_remaining(self) -> float: ...

    def report_outage(self) -> None: ...

    def snapshot(self) -> dict: ...


def make_token() -> str:
    """``pid=<pid> host=<hostname> nonce=<16 hex>``: readable with redis-cli, unique across containers."""
    return f"pid={os.getpid()} host={socket.gethostname()} nonce={secrets.token_hex(8)}"


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def outage_backoff(failures: int, cap: float, rng: random.Random,
                   base: float = OUTAGE_BACKOFF_BASE_SECONDS) -> float:
    """Pause after the ``failures``-th failed call in a row: base, 2×base, 4×base … capped, minus up to 20 % jitter
    (so processes that lost Redis together do not come back in step, and the cap is never exceeded)."""
    delay = min(cap, base * (2 ** min(max(0, failures - 1), 30)))
    return delay * rng.uniform(0.8, 1.0)


class RedisLease:
    """The lease as a Redis key with a TTL, via redis-py's ``Lock`` (its Lua scripts compare the token atomically).

    ``redis_client`` must fail fast (connect/read timeouts of a few seconds and ``retry=Retry(NoBackoff(), 0)``):
    a call that hangs here delays noticing loss. Thread-safe: the keeper thread acquires and renews while the
    poller and delivery threads call ``holds_locally()`` and ``verify()``. ``max_backoff_s`` caps the pause after
    consecutive failed calls (``backoff_remaining()``); ``make_lease`` passes ``LEASE_RETRY_SECONDS``.
    """

    backend = "redis"

    def __init__(self, redis_client: Any, ttl_seconds: float, *, key: str = LEASE_KEY,
                 safety_margin_s: float | None = None, max_backoff_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        from redis.lock import Lock

        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be > 0")
        self.redis = redis_client
        self.key = key
        self.ttl_seconds = float(ttl_seconds)
        # The margin absorbs clock-rate differences and the time between a check and the action it guards. It must
        # stay below TTL - TTL/3 (the renewal period) or a healthy holder would stop acting between renewals.
        self.safety_margin_s = self.ttl_seconds / 5.0 if safety_margin_s is None else float(safety_margin_s)
        if not 0 <= self.safety_margin_s < self.ttl_seconds * 2 / 3:
            raise ValueError("safety_margin_s must be >= 0 and below two thirds of the TTL")
        self.max_backoff_s = self.ttl_seconds / 3.0 if max_backoff_s is None else float(max_backoff_s)
        if self.max_backoff_s <= 0:
            raise ValueError("max_backoff_s must be > 0")
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall = wall_clock
        self._mutex = threading.Lock()
        # thread_local=False: the keeper thread acquires, any thread may release on shutdown.
        self._lock = Lock(redis_client, key, timeout=self.ttl_seconds, thread_local=False)
        self._pid = os.getpid()
        self._token = make_token()
        self._held = False
        self._deadline = float("-inf")       # monotonic: last confirmed renewal (send time) + TTL - margin
        self._confirmed_at = float("-inf")   # monotonic send time of the last confirmed set/extend
        self._acquired_at: float | None = None
        self._holder: str | None = None
        self._renewals = 0
        self._losses = 0
        self._unreachable = False
        self._failures = 0                   # failed calls in a row (any thread); 0 while Redis answers
        self._outage_since = 0.0             # monotonic time of the first of them
        self._outage_reported = False        # its start was logged: log its end too
        self._retry_at = float("-inf")       # monotonic: no thread should ask Redis again before this
        self.last_loss_reason: str | None = None
        self.last_error: str | None = None

    # --- identity ---------------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        # A lease object created before a fork must not hand the parent's token to the child.
        if os.getpid() != self._pid:
            with self._mutex:
                if os.getpid() != self._pid:
                    self._pid = os.getpid()
                    self._token = make_token()
                    self._held = False
                    self._deadline = float("-inf")
        return self._token

    # --- the verbs --------------------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it (SET NX PX); True if this process holds it afterwards.

        Raises ``LeaseStoreUnreachable`` when Redis does not answer.
        """
        if self.is_held:
            return self.renew()
        token = self.token
        sent_at = self._clock()
        try:
            acquired = bool(self._lock.acquire(blocking=False, token=token))
            if not acquired:
                current = _as_text(self.redis.get(self.key))
                if current == token:
                    # Our own earlier SET NX executed although its reply was lost (e.g. it sat in a paused
                    # server's socket buffer). Re-prove it with a compare-and-extend, which also gives a fresh
                    # confirmed deadline.
                    sent_at = self._clock()
                    acquired = self._extend_or_false()
                else:
                    self._set_reachable(sent_at, holder=current)
                    return False
        except Exception as exc:  # redis.RedisError and socket errors: translated at the boundary
            self._set_unreachable(exc)
            raise LeaseStoreUnreachable(f"redis unreachable during acquire: {self.last_error}") from None
        if not acquired:
            self._set_reachable(sent_at, holder=None)
            return False
        with self._mutex:
            self._held = True
            self._confirmed_at = sent_at
            self._deadline = sent_at + self.ttl_seconds - self.safety_margin_s
            self._acquired_at = self._wall()
            self._holder = token
            ended = self._end_outage_locked(sent_at)
        self._log_outage_end(ended)
        return True

    def renew(self) -> bool:
        """Compare-and-extend the TTL; False when the key no longer holds our token (the lease is lost).

        Raises ``LeaseStoreUnreachable`` when Redis does not answer: ownership is then unproven, and
        ``holds_locally()`` turns false at the local deadline.
        """
        if not self.is_held:
            return False
        sent_at = self._clock()
        try:
            extended = self._extend_or_false()
            current = None if extended else _as_text(self.redis.get(self.key))
        except Exception as exc:
            self._set_unreachable(exc)
            raise LeaseStoreUnreachable(f"redis unreachable during renewal: {self.last_error}") from None
        with self._mutex:
            ended = self._end_outage_locked(sent_at)
            if extended:
                self._renewals += 1
                self._confirmed_at = sent_at
                self._deadline = sent_at + self.ttl_seconds - self.safety_margin_s
                self._holder = self._token
            else:
                self._mark_lost_locked(
                    f"renewal found another holder: {current}" if current
                    else "renewal found the key gone (expired or deleted)", holder=current)
        self._log_outage_end(ended)
        return extended

    def release(self) -> None:
        """Compare-and-delete: removes the key only if it still holds our token. Never raises."""
        with self._mutex:
            was_held = self._held
            # Stop local belief before the key goes, so no thread acts in between.
            self._held = False
            self._deadline = float("-inf")
        if not was_held:
            return
        try:
            self._bind_token()
            self._lock.release()
        except Exception as exc:
            from redis.exceptions import LockNotOwnedError

            if isinstance(exc, LockNotOwnedError):
                logger.warning("BG_POLLER: lease was no longer ours at release")
            else:
                logger.warning("BG_POLLER: lease release failed (%s); it expires within %.0fs",
                               _describe(exc), self.ttl_seconds)
        with self._mutex:
            if self._holder == self._token:
                self._holder = None

    def holds_locally(self) -> bool:
        """No I/O: held, and the monotonic clock is before the last confirmed renewal + TTL - safety margin."""
        return self._held and self._clock() < self._deadline

    def verify(self) -> None:
        """Raise ``LeaseLost`` unless ``holds_locally()`` and the key still holds our token (one GET)."""
        if not self.holds_locally():
            raise LeaseLost("lease not held locally (not acquired, lost, or local deadline passed)")
        sent_at = self._clock()
        try:
            current = _as_text(self.redis.get(self.key))
        except Exception as exc:
            self._set_unreachable(exc)
            raise LeaseStoreUnreachable(f"redis unreachable during verify: {self.last_error}") from None
        self._set_reachable_after_verify(sent_at)
        if current != self._token:
            with self._mutex:
                # Authoritative evidence: stop every thread now; the keeper's next renewal records the loss.
                self._deadline = float("-inf")
                self._holder = current
            raise LeaseLost(f"the lease key holds {current!r}" if current else "the lease key is gone")
        if not self.holds_locally():  # the GET itself may have outlasted the deadline
            raise LeaseLost("local deadline passed during verify")

    def backoff_remaining(self) -> float:
        """Seconds before any thread should ask Redis again (0 unless its last call failed). No I/O."""
        with self._mutex:
            if not self._unreachable:
                return 0.0
            return max(0.0, self._retry_at - self._clock())

    def report_outage(self) -> None:
        """Log the current outage at ERROR unless it was already logged (no-op while Redis answers). No I/O."""
        with self._mutex:
            if not self._unreachable or self._outage_reported:
                return
            self._outage_reported = True
            error = self.last_error
        logger.error("BG_POLLER: Redis unreachable (%s); polling nothing until it answers again", error)

    def snapshot(self) -> dict:
        """The lease state for the status routes (no I/O)."""
        with self._mutex:
            now = self._clock()
            expires = self._confirmed_at + self.ttl_seconds - now if self._held else None
            if self._unreachable:
                state = LeaseState.REDIS_UNREACHABLE
            elif self._held and now < self._deadline:
                state = LeaseState.HELD
            else:
                state = LeaseState.STANDBY
            return {
                "backend": self.backend,
                "holder": self._holder,
                "acquired_at": iso_utc_ms(self._acquired_at) if self._held else None,
                "expires_in_s": round(max(expires, 0.0), 3) if expires is not None else None,
                "renewals": self._renewals,
                "losses": self._losses,
                "state": state.value,
            }

    # --- helpers for the keeper -------------------------------------------------------------------------------

    @property
    def is_held(self) -> bool:
        """Whether this process believes it acquired the lease and has not been told otherwise (may be stale)."""
        return self._held

    @property
    def unreachable(self) -> bool:
        return self._unreachable

    @property
    def losses(self) -> int:
        return self._losses

    def _bind_token(self) -> None:
        # Lock keeps the token it compares in `local.token` (set by acquire, cleared by release). Binding ours
        # explicitly lets extend/release work after a failed or lost acquire too (e.g. adopting our own key).
        self._lock.local.token = self._lock.redis.get_encoder().encode(self._token)

    def _extend_or_false(self) -> bool:
        from redis.exceptions import LockNotOwnedError

        self._bind_token()
        try:
            # replace_ttl=True: the TTL becomes a full TTL from now, it is not added to what is left.
            return bool(self._lock.extend(self.ttl_seconds, replace_ttl=True))
        except LockNotOwnedError:
            return False

    def _mark_lost_locked(self, reason: str, holder: str | None) -> None:
        self._held = False
        self._deadline = float("-inf")
        self._losses += 1
        self._holder = holder
        self.last_loss_reason = reason

    def _set_unreachable(self, exc: BaseException) -> None:
        with self._mutex:
            started = not self._unreachable
            now = self._clock()
            self._unreachable = True
            self.last_error = _describe(exc)
            self._failures += 1
            if started:
                self._outage_since = now
                self._outage_reported = False
            # Each failure (of any thread) pushes the shared retry time out: a refused connection fails in
            # microseconds, and a caller that retried at once would spin and log a line per attempt.
            self._retry_at = now + outage_backoff(self._failures, self.max_backoff_s, self._rng)

    def _set_reachable(self, sent_at: float, holder: str | None) -> None:
        with self._mutex:
            ended = self._end_outage_locked(sent_at)
            self._holder = holder
        self._log_outage_end(ended)

    def _set_reachable_after_verify(self, sent_at: float) -> None:
        if self._unreachable:  # unlocked peek: the common case (Redis answering) takes no lock
            with self._mutex:
                ended = self._end_outage_locked(sent_at)
            self._log_outage_end(ended)

    def _end_outage_locked(self, sent_at: float) -> float | None:
        """Clear the outage if the call that succeeded was sent after it began (a late reply to an older call
        proves nothing about now); returns how long a reported outage lasted, for the caller to log outside the
        lock (one nobody waited on, e.g. a single failed verify before the next succeeded, was never logged)."""
        if not self._unreachable or sent_at < self._outage_since:
            return None
        self._unreachable = False
        self._failures = 0
        self._retry_at = float("-inf")
        return self._clock() - self._outage_since if self._outage_reported else None

    @staticmethod
    def _log_outage_end(lasted: float | None) -> None:
        if lasted is not None:
            logger.info("BG_POLLER: Redis reachable again after %.1fs", lasted)


class FileLease:
    """``fcntl.flock`` on a lock file: held as long as the open descriptor is; one container only.

    ``flock`` (not ``lockf``) because its lock belongs to the open file description, so two lease objects in one
    process exclude each other too, and the kernel drops it when the process dies, however it dies.
    """

    backend = "file"

    def __init__(self, path: str, *, renew_period_s: float = 10.0, wall_clock: Callable[[], float] = time.time) -> None:
        self.path = path
        # No TTL: the keeper only checks periodically that the lock file was not replaced under us.
        self.ttl_seconds = 3.0 * renew_period_s
        self._wall = wall_clock
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._token = make_token()
        self._acquired_at: float | None = None
        self._holder: str | None = None
        self._renewals = 0
        self._losses = 0
        self.last_loss_reason: str | None = None

    @property
    def token(self) -> str:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._token = make_token()
        return self._token

    def try_acquire(self) -> bool:
        """Take the flock if no other descriptor holds it and write our token into the file.

        Raises ``OSError`` when the file cannot be opened or the token cannot be written (disk full, I/O error);
        the descriptor is closed on every path that does not keep the lease, so a failure never leaves it locked.
        """
        if self._fd is not None:
            return self.renew()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        kept = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = os.read(fd, 200).decode("utf-8", "replace").strip() or None
                except OSError:
                    holder = None
                with self._mutex:
                    self._holder = holder
                return False
            token = self.token
            # The token in the file is for operators (`cat poller.lock`); the lock itself is the flock. A lease
            # whose token cannot be written is not taken: the file would name a stale holder.
            os.ftruncate(fd, 0)
            os.pwrite(fd, (token + "\n").encode(), 0)
            with self._mutex:
                self._fd = fd
                self._acquired_at = self._wall()
                self._holder = token
            kept = True
            return True
        finally:
            if not kept:
                _close_quietly(fd)  # drops the flock if we took it

    def renew(self) -> bool:
        """False if the lock file was deleted or replaced (another process could then lock the new file)."""
        fd = self._fd
        if fd is None:
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if same:
            with self._mutex:
                self._renewals += 1
            return True
        with self._mutex:
            self._losses += 1
            self.last_loss_reason = "the lock file was deleted or replaced"
            self._holder = None
        self._close()
        return False

    def release(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        self._close()
        with self._mutex:
            self._holder = None

    def holds_locally(self) -> bool:
        # A flock cannot expire while the process lives, even when it is stopped: no deadline needed.
        return self._fd is not None

    def verify(self) -> None:
        if not self.holds_locally():
            raise LeaseLost("file lock not held")

    def backoff_remaining(self) -> float:
        return 0.0  # no remote store to wait for

    def report_outage(self) -> None:
        pass

    def snapshot(self) -> dict:
        with self._mutex:
            held = self._fd is not None
            return {
                "backend": self.backend,
                "holder": self._holder,
                "acquired_at": iso_utc_ms(self._acquired_at) if held else None,
                "expires_in_s": None,
                "renewals": self._renewals,
                "losses": self._losses,
                "state": (LeaseState.HELD if held else LeaseState.STANDBY).value,
            }

    @property
    def is_held(self) -> bool:
        return self._fd is not None

    @property
    def unreachable(self) -> bool:
        return False

    @property
    def losses(self) -> int:
        return self._losses

    def _close(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
            self._acquired_at = None
        if fd is not None:
            _close_quietly(fd)  # closing the only descriptor drops the flock


def _close_quietly(fd: int) -> None:
    # On Linux close() releases the descriptor (and so the flock) even when it reports an error (EIO, EINTR):
    # retrying could close a descriptor another thread has been given since; there is nothing left to do.
    try:
        os.close(fd)
    except OSError as exc:
        logger.warning("BG_POLLER: closing the lock file reported %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def lease_key(mailbox_id: str = DEFAULT_ID) -> str:
    """The Redis key of a mailbox's lease: ``render_signal:poller_lock`` for mailbox ``default`` (the key of every
    earlier release), ``render_signal:poller_lock:<id>`` for any other."""
    return LEASE_KEY if mailbox_id == DEFAULT_ID else f"{LEASE_KEY}:{mailbox_id}"


def lock_file_for(path: str, mailbox_id: str = DEFAULT_ID) -> str:
    """The lock file of a mailbox's lease: ``path`` for mailbox ``default``, ``<path stem>-<id><suffix>`` else."""
    if mailbox_id == DEFAULT_ID:
        return path
    stem, suffix = os.path.splitext(path)
    return f"{stem}-{mailbox_id}{suffix}"


def make_lease(settings: Any, redis_client: Any = None, mailbox_id: str = DEFAULT_ID) -> Lease:
    """The lease of mailbox ``mailbox_id``: RedisLease when ``settings.redis_url`` is set (never the file lock
    then, reachable or not), else FileLease (one lock file per mailbox, shared by the container's workers)."""
    global _file_warning_logged
    if settings.redis_url:
        if redis_client is None:
            from services.redis_client import make_redis_client

            redis_client = make_redis_client(settings)
        return RedisLease(redis_client, settings.redis_lock_ttl_seconds, key=lease_key(mailbox_id),
                          max_backoff_s=settings.lease_retry_interval)
    path = lock_file_for(settings.lock_file_path, mailbox_id)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with _file_warning_lock:
        if not _file_warning_logged:
            _file_warning_logged = True
            logger.warning(FILE_LOCK_WARNING)
    return FileLease(path, renew_period_s=min(settings.redis_lock_ttl_seconds / 3.0, 10.0))


class OwnershipGuard:
    """What the poller and delivery threads call around mailbox and webhook actions.

    ``check_local()`` before every IMAP command (no I/O), ``check_remote()`` before each batch, flag STORE and webhook
    attempt (one GET); both raise ``LeaseLost``. ``record_action()`` is called as a side effect starts and counts it
    in ``actions_without_ownership`` when the local deadline had already passed: a path that skipped the checks
    (or was frozen between check and action) shows up there, and tests assert it stays 0.
    """

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._mutex = threading.Lock()
        self.actions = 0
        self.actions_without_ownership = 0
        self.refusals = 0

    def check_local(self) -> None:
        if not self.lease.holds_locally():
            self._refused()
            raise LeaseLost("lease not held locally")

    def check_remote(self) -> None:
        try:
            self.lease.verify()
        except LeaseLost:
            self._refused()
            raise

    def record_action(self) -> None:
        owned = self.lease.holds_locally()
        with self._mutex:
            self.actions += 1
            if not owned:
                self.actions_without_ownership += 1

    def _refused(self) -> None:
        with self._mutex:
            self.refusals += 1


class LeaseKeeper:
    """The lease thread's body: standby → acquire → renew every TTL/3 → (lost → standby); releases on stop.

    ``held_event`` is set while this process may act (held and within the local deadline, as far as the keeper
    has seen); ``on_change(snapshot)`` is called on every transition. Installs no signal handler.
    """

    def __init__(self, lease: Lease, settings: Any = None, *, retry_interval: float | None = None,
                 renew_interval: float | None = None,
                 on_change: Callable[[dict], None] | None = None, policy: Any = None) -> None:
        """``policy``: a ``background.membership.SpreadPolicy`` deciding whether this process tries the lease
        and when it hands it over to the mailbox's preferred member (None: always try, never hand over)."""
        self.lease = lease
        self.policy = policy
        # Called right after an acquisition, before any thread may act (background.fencing: the lease's epoch).
        self.on_acquired: Callable[[], None] | None = None
        if retry_interval is None:
            retry_interval = settings.lease_retry_interval if settings is not None else lease.ttl_seconds / 3.0
        self.retry_interval = float(retry_interval)
        self.renew_interval = float(renew_interval) if renew_interval is not None else lease.ttl_seconds / 3.0
        self.on_change = on_change
        self.held_event = threading.Event()
        self._in_outage = False
        self._file_error_logged = False

    def run(self, stop_event: threading.Event) -> None:
        try:
            while not stop_event.is_set():
                delay = self.step()
                stop_event.wait(delay)
        finally:
            self.stop_holding()

    def step(self) -> float:
        """One acquisition or renewal attempt; returns how long to wait before the next one."""
        if not self.lease.is_held:
            return self._standby_step()
        return self._holder_step()

    def stop_holding(self) -> None:
        """Release the lease if held (compare-and-delete). Called from ``run``'s teardown."""
        if self.lease.is_held:
            self.held_event.clear()
            self.lease.release()
            logger.info("BG_POLLER: lease released pid=%s", os.getpid())
            self._notify()

    # --- states -----------------------------------------------------------------------------------------------

    def _standby_step(self) -> float:
        if self.policy is not None and not self.policy.may_acquire():
            return self.retry_interval
        try:
            acquired = self.lease.try_acquire()
        except LeaseStoreUnreachable:
            self._note_unreachable()
            return self.retry_interval
        except OSError as exc:  # file lease: the lock file cannot be opened
            if not self._file_error_logged:
                self._file_error_logged = True
                logger.error("BG_POLLER: cannot open the lock file (%s)", _describe(exc))
            return self.retry_interval
        self._file_error_logged = False
        self._note_reachable()
        if not acquired:
            return self.retry_interval
        if self.on_acquired is not None:
            try:
                self.on_acquired()
            except Exception as exc:  # no epoch, no fencing: do not act under this lease
                logger.error("BG_POLLER: could not fence the new lease (%s); releasing it", _describe(exc))
                self.lease.release()
                return self.retry_interval
        logger.info("BG_POLLER: Singleton lock acquired (%s) pid=%s",
                    "Redis" if self.lease.backend == "redis" else "file", os.getpid())
        self.held_event.set()
        self._notify()
        return self.renew_interval

    def _holder_step(self) -> float:
        try:
            renewed = self.lease.renew()
        except LeaseStoreUnreachable:
            self._note_unreachable()
            if not self.lease.holds_locally() and self.held_event.is_set():
                # Ownership can no longer be proven: the other threads stop at their next check anyway
                # (monotonic deadline); this tells whoever waits on the event.
                self.held_event.clear()
                self._notify()
            return min(self.renew_interval, self.retry_interval)
        self._note_reachable()
        if renewed:
            if not self.held_event.is_set():
                logger.info("BG_POLLER: lease re-confirmed pid=%s", os.getpid())
                self.held_event.set()
                self._notify()
            if self.policy is not None and self.policy.should_hand_over():
                self.stop_holding()
                self.policy.handed_over()
                return self.retry_interval
            return self.renew_interval
        logger.error("BG_POLLER: lease lost (%s)", self.lease.last_loss_reason)
        self.held_event.clear()
        self._notify()
        return self.retry_interval

    # The lease logs an outage once, whichever thread reports it first, and its end; the keeper tells ``on_change``.
    def _note_unreachable(self) -> None:
        self.lease.report_outage()
        if not self._in_outage:
            self._in_outage = True
            self._notify()

    def _note_reachable(self) -> None:
        if self._in_outage:
            self._in_outage = False
            self._notify()

    def _notify(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(self.lease.snapshot())
        except Exception:
            logger.warning("BG_POLLER: lease on_change callback failed", exc_info=True)


def wait_for_ownership(lease: Lease, held_event: threading.Event,
                       stop_event: threading.Event, slice_seconds: float = 1.0) -> bool:
    """For the acting threads' loops: True when this process may act now; otherwise wait a moment, return False.

    While Redis is in its backoff after a failed call it waits (at most ``slice_seconds`` per call) even if the
    local deadline has not passed: the caller's next ``verify()`` would fail at once, and a loop that retried
    immediately would spin on a refused connection.
    """
    pause = lease.backoff_remaining()
    if pause > 0:
        lease.report_outage()
        stop_event.wait(min(pause, slice_seconds))
        return False
    if lease.holds_locally():
        return True
    held_event.wait(slice_seconds)
    if not held_event.is_set():
        stop_event.wait(0.2)
    return False

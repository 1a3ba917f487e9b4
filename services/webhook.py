"""One webhook attempt and the retry schedule around it.

``WebhookSender.attempt()`` makes exactly one HTTP POST of an outbox item's body to ``WEBHOOK_URL`` with the
Standard Webhooks headers (``webhook-id``, ``webhook-timestamp`` and, with ``WEBHOOK_SECRET``,
``webhook-signature``), and classifies the answer as ``delivered`` (2xx), ``retry`` (connection error, timeout,
408, 429, 5xx) or ``permanent`` (3xx, which is never followed, and the other 4xx). It never raises for what the
network or the receiver does; ``WebhookError`` is only for programming and configuration errors.
``WEBHOOK_TIMEOUT_SECONDS`` bounds the whole attempt on the wall clock (from the start of the request to the last
byte read), not each socket read: a watchdog shuts the attempt's socket down at the deadline, so a receiver that
trickles its answer a byte at a time is cut too. A cut before the status line and headers are complete is a retry
``timeout``; after them, the status decides and the cut only shortens the excerpt. Name resolution is the one step
no socket can interrupt: a resolver slower than the bound delays the cut until the socket exists. Pure helpers
decide when to try again (``next_delay``) and when to give up (``RetryPolicy.deadline``). Logging the
delivered/retry/dead-letter lines is the delivery loop's job; this module only offers ``redact_url`` for them,
because the URL is a bearer capability and is never logged in full.
"""

from __future__ import annotations

import codecs
import email.utils
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:
    from config import TargetConfig

DEFAULT_VERSION = "dev"
EXCERPT_CHARS = 500
# Bytes read from an answer for the excerpt: enough for EXCERPT_CHARS of 4-byte UTF-8; the rest is never read,
# so a receiver answering a huge body cannot make an attempt slow or memory-hungry.
EXCERPT_READ_BYTES = 4 * EXCERPT_CHARS
# A Retry-After beyond an hour is treated as an hour: the retry window (WEBHOOK_RETRY_HOURS) keeps running, and a
# misconfigured receiver must not be able to park a delivery for days.
MAX_RETRY_AFTER_SECONDS = 3600.0
# ±10 % around each scheduled delay. The schedule is already spread (5 s … 1 h), so the jitter only has to
# de-synchronise items that failed together (e.g. 20 emails queued during an outage); "full jitter"
# (uniform 0..delay) would turn the documented 10 min step into anything from 0 to 10 min.
JITTER_FRACTION = 0.10

RETRY_STATUSES = frozenset({408, 429})
_EVENT_ID = re.compile(r"[\x21-\x7e]{1,256}")
_VERSION_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")

OutcomeKind = Literal["delivered", "retry", "permanent"]


class WebhookError(Exception):
    """A programming or configuration error (no URL, bad event id, non-UTF-8 body); never a network outcome."""


@dataclass(frozen=True)
class AttemptOutcome:
    """What one attempt produced. ``error`` is a short reason: ``timeout``, ``connection_error``, ``http_503``…"""

    kind: OutcomeKind
    status: int | None
    retry_after: float | None
    excerpt: str | None
    elapsed_ms: int
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.kind == "delivered"


def redact_url(url: str | None) -> str:
    """``scheme://host[:port]/…`` for log lines: the path and query of a webhook URL are the secret part."""
    if not url:
        return "(none)"
    try:
        parts = urlsplit(url)
        host = parts.netloc.rsplit("@", 1)[-1]
    except ValueError:
        return "(invalid url)"
    if not parts.scheme or not host:
        return "(invalid url)"
    return f"{parts.scheme}://{host}/…"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), clamped to 0..1 h; None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def next_delay(attempt_number: int, schedule: tuple[float, ...], retry_after: float | None = None,
               rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt_number`` (1-based): ``schedule[n-1]`` (the last entry
    repeats) ±10 % jitter, but never less than the receiver's ``Retry-After`` (itself capped at 1 h)."""
    if attempt_number < 1:
        raise WebhookError(f"attempt_number must be >= 1, got {attempt_number}")
    if not schedule:
        raise WebhookError("retry schedule is empty")
    base = schedule[min(attempt_number, len(schedule)) - 1]
    jitter = (rng or random).uniform(-JITTER_FRACTION, JITTER_FRACTION)
    delay = base * (1.0 + jitter)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS))
    return delay


def classify_status(status: int, retried: frozenset[int] | None = None) -> tuple[OutcomeKind, str | None]:
    """2xx delivered; 408, 429 and 5xx retry (or exactly ``retried``, a target profile's list); 3xx (not
    followed) and other 4xx permanent."""
    if 200 <= status <= 299:
        return "delivered", None
    if (status in retried) if retried is not None else (status in RETRY_STATUSES or 500 <= status <= 599):
        return "retry", f"http_{status}"
    # 3xx, the other 4xx, and anything outside HTTP's ranges: retrying the same request cannot help.
    return "permanent", f"http_{status}"


class _AttemptWatchdog:
    """The wall-clock bound of one attempt: at its deadline, shuts down the socket of every connection the attempt
    used, so that a read blocked on a trickling receiver returns at once (closing alone would not wake it).

    Connections register themselves through ``_active_watchdog()`` (the attempt runs in the calling thread).
    """

    def __init__(self, seconds: float, started: float) -> None:
        self.deadline = started + seconds
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._expired = False
        self._finished = False
        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
        self._timer.name = "webhook-attempt-watchdog"
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return self._expired

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            if all(known is not connection for known in self._connections):
                self._connections.append(connection)
            if self._expired:  # the deadline passed while it was connecting: cut it now
                _shut_down(connection)

    def head_received(self) -> bool:
        """Call when the status line and headers are in; True when the attempt had been cut before (then the end of
        the stream may have passed for the end of the headers, and the answer is not to be trusted)."""
        with self._lock:  # ordered with _expire: False means no socket had been shut down yet
            return self._expired

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._expired = True
            for connection in self._connections:
                _shut_down(connection)

    def finish(self) -> None:
        """Disarm; once this returns no socket is shut down any more (the pool may reuse the connection)."""
        with self._lock:
            self._finished = True
        self._timer.cancel()
        self._timer.join()


def _shut_down(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    try:
        # The plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop its SSL object under the
        # reading thread's feet. A TLS socket still in its handshake is no longer the raw one (which is then
        # detached, so this fails): the handshake is bounded by the socket timeout instead (_BoundedConnection).
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


_ATTEMPT = threading.local()


def _active_watchdog() -> _AttemptWatchdog | None:
    return getattr(_ATTEMPT, "watchdog", None)


class _BoundedConnection(HTTPConnection):
    """A urllib3 connection that puts itself under the current attempt's watchdog, and keeps connecting (TCP, then
    the TLS handshake, which CPython bounds as a whole by the socket timeout) within what is left of the bound."""

    def connect(self) -> None:
        watchdog = _active_watchdog()
        if watchdog is not None:
            watchdog.watch(self)
            if isinstance(self.timeout, (int, float)):
                self.timeout = max(0.001, min(float(self.timeout), watchdog.remaining()))
        super().connect()
        if watchdog is not None:
            watchdog.watch(self)

    def _new_conn(self) -> socket.socket:
        # urllib3's step between the TCP connect and the TLS handshake (private, stable since 1.x): were it renamed,
        # the handshake would only keep its own bound (the connect timeout), and everything after it stays cut.
        sock = super()._new_conn()
        watchdog = _active_watchdog()
        if watchdog is not None:
            sock.settimeout(max(0.001, watchdog.remaining()))
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        watchdog = _active_watchdog()
        if watchdog is not None:  # a kept-alive connection is reused without connect()
            watchdog.watch(self)
        super().request(*args, **kwargs)


class _BoundedHTTPSConnection(_BoundedConnection, HTTPSConnection):
    pass


class _BoundedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _BoundedConnection


class _BoundedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


class _AttemptAdapter(HTTPAdapter):
    """No hidden retries (a retry is the delivery loop's decision, and a silent one could deliver twice), and
    connections that the attempt's watchdog can cut."""

    def __init__(self) -> None:
        super().__init__(max_retries=0, pool_connections=1, pool_maxsize=4)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _BoundedHTTPConnectionPool,
                                                   "https": _BoundedHTTPSConnectionPool}

    def close(self) -> None:
        # urllib3 2 only forgets its pools here; their kept-alive sockets close when the pools are collected, which a
        # reference cycle through a failed attempt's traceback can put off until the garbage collector runs.
        pools = self.poolmanager.pools
        for key in pools.keys():
            try:
                pool = pools[key]
            except KeyError:
                continue
            pool.close()
        super().close()


class WebhookSender:
    """Makes single webhook attempts to one target (``TargetConfig``) over one pooled ``requests.Session``.

    A session is not documented as thread-safe: use one sender per delivery thread. A session handed in gets the
    sender's own adapter mounted for http(s), which is what bounds an attempt and forbids hidden retries.
    """

    def __init__(self, target: "TargetConfig", session: requests.Session | None = None,
                 version: str | None = None) -> None:
        if not target.url:
            raise WebhookError("WEBHOOK_URL is not set")
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"WEBHOOK_URL is not an http(s) URL: {redact_url(target.url)}")
        self._url = target.url
        self._attempt_seconds = target.timeout_seconds
        # Per phase (connect, each read) as well, so that each is bounded even where no watchdog can act.
        self._timeout = (target.timeout_seconds, target.timeout_seconds)
        self._signer = Webhook(target.secret) if target.secret else None
        self._extra_headers = dict(target.headers)
        self._retried = target.defaults.retried_statuses
        self._auth = (target.basic_auth.user, target.basic_auth.password) if target.basic_auth else None
        raw_version = version or DEFAULT_VERSION
        self.user_agent = f"render-signal/{_VERSION_UNSAFE.sub('', raw_version) or DEFAULT_VERSION}"
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # No proxy variables, .netrc credentials or CA bundle from the environment: the webhook goes straight
            # to the configured host, verified against the bundled CA store, with no credential we did not choose.
            session.trust_env = False
            # Certificate and host name always checked: against WEBHOOK_CA_FILE when set, else the bundled store.
            session.verify = target.ca_file or True
        # Also on a session handed in: the attempt's bound and the absence of hidden retries are this class's promise.
        adapter = _AttemptAdapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session

    @property
    def target(self) -> str:
        """The redacted target, for log lines."""
        return redact_url(self._url)

    def signed_headers(self, event_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        """The request headers of one attempt; ``webhook-signature`` only when a secret is configured."""
        if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
            raise WebhookError("event_id must be 1-256 printable ASCII characters without spaces")
        # The target's extra headers first, so that none of them can replace a Standard Webhooks header.
        headers = {
            **self._extra_headers,
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._signer is not None:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise WebhookError("body must be UTF-8 JSON to be signed") from None
            # The reference package signs "id.timestamp.data" with the data as str; for UTF-8 bodies that is exactly
            # the bytes on the wire. It reads the datetime as UTC, so it must be an aware UTC datetime.
            when = datetime.fromtimestamp(timestamp, tz=timezone.utc)
            headers["webhook-signature"] = self._signer.sign(msg_id=event_id, timestamp=when, data=text)
        return headers

    def attempt(self, event_id: str, body: bytes, timestamp: int | None = None) -> AttemptOutcome:
        """POST ``body`` once and classify the result; raises ``WebhookError`` only for a programming error."""
        if not isinstance(body, (bytes, bytearray)):
            raise WebhookError("body must be bytes")
        body = bytes(body)
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        headers = self.signed_headers(event_id, body, stamp)
        started = time.monotonic()
        watchdog = _AttemptWatchdog(self._attempt_seconds, started)
        _ATTEMPT.watchdog = watchdog
        try:
            return self._post(body, headers, watchdog, started)
        finally:
            _ATTEMPT.watchdog = None
            watchdog.finish()

    def _post(self, body: bytes, headers: dict[str, str], watchdog: _AttemptWatchdog,
              started: float) -> AttemptOutcome:
        try:
            response = self._session.post(self._url, data=body, headers=headers, timeout=self._timeout,
                                          allow_redirects=False, stream=True, auth=self._auth)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader) as exc:
            raise WebhookError(f"cannot send to {redact_url(self._url)}: {type(exc).__name__}") from None
        except requests.exceptions.RequestException as exc:
            return self._failed("timeout" if watchdog.expired else _failure_reason(exc), started)
        if watchdog.head_received():
            response.close()
            return self._failed("timeout", started)

        try:
            status = response.status_code
            excerpt = _read_excerpt(response, watchdog.deadline)
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        finally:
            response.close()
        kind, error = classify_status(status, self._retried)
        return AttemptOutcome(kind=kind, status=status, retry_after=retry_after if kind == "retry" else None,
                              excerpt=excerpt, elapsed_ms=_elapsed_ms(started), error=error)

    def close(self) -> None:
        """Close the connection pool (only a session this sender created)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> "WebhookSender":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _failed(error: str, started: float) -> AttemptOutcome:
        return AttemptOutcome(kind="retry", status=None, retry_after=None, excerpt=None,
                              elapsed_ms=_elapsed_ms(started), error=error)


def _failure_reason(exc: requests.exceptions.RequestException) -> str:
    if isinstance(exc, requests.exceptions.Timeout):  # before ConnectionError: ConnectTimeout is both
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls_error"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection_error"
    return "request_error"


def _read_excerpt(response: requests.Response, deadline: float) -> str | None:
    """Up to EXCERPT_CHARS of the answer, decoded leniently and made single-line. The status line has already
    arrived, so a body that fails or trickles past the attempt's deadline (where the watchdog cuts it) only
    shortens the excerpt."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=1024):
            chunks.append(chunk)
            size += len(chunk)
            if size >= EXCERPT_READ_BYTES or time.monotonic() > deadline:
                break
    except (requests.exceptions.RequestException, OSError, ValueError):
        pass
    raw = b"".join(chunks)[:EXCERPT_READ_BYTES]
    if not raw:
        return None
    text = raw.decode(_declared_charset(response) or "utf-8", errors="replace")
    # Control characters (newlines included) would let a receiver forge log lines; collapse them to spaces.
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return text or None


def _declared_charset(response: requests.Response) -> str | None:
    # Not ``response.encoding``: requests falls back to ISO-8859-1 for text/* without a charset, which garbles
    # the UTF-8 that receivers actually send.
    match = re.search(r"charset=[\"']?([A-Za-z0-9._:-]+)", response.headers.get("Content-Type", ""), re.I)
    if not match:
        return None
    try:
        return codecs.lookup(match.group(1)).name
    except LookupError:
        return None


def _elapsed_ms(started: float) -> int:
    return int(round((time.monotonic() - started) * 1000))

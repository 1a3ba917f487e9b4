"""One webhook attempt and the retry schedule around it.

``WebhookSender.attempt()`` makes exactly one HTTP POST of an outbox item's body to ``WEBHOOK_URL`` with the
Standard Webhooks headers (``webhook-id``, ``webhook-timestamp`` and, with ``WEBHOOK_SECRET``,
``webhook-signature``), and classifies the answer as ``delivered`` (2xx), ``retry`` (connection error, timeout,
408, 429, 5xx) or ``permanent`` (3xx, which is never followed, and the other 4xx). It never raises for what the
network or the receiver does; ``WebhookError`` is only for programming and configuration errors. Pure helpers
decide when to try again (``next_delay``) and when to give up (``RetryPolicy.deadline``). Logging the
delivered/retry/dead-letter lines is the delivery loop's job; this module only offers ``redact_url`` for them,
because the URL is a bearer capability and is never logged in full.
"""

from __future__ import annotations

import codecs
import email.utils
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from standardwebhooks.webhooks import Webhook

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


def classify_status(status: int) -> tuple[OutcomeKind, str | None]:
    """2xx delivered; 408, 429 and 5xx retry; 3xx (not followed) and other 4xx permanent."""
    if 200 <= status <= 299:
        return "delivered", None
    if status in RETRY_STATUSES or 500 <= status <= 599:
        return "retry", f"http_{status}"
    # 3xx, the other 4xx, and anything outside HTTP's ranges: retrying the same request cannot help.
    return "permanent", f"http_{status}"


class WebhookSender:
    """Makes single webhook attempts to one target (``TargetConfig``) over one pooled ``requests.Session``.

    A session is not documented as thread-safe: use one sender per delivery thread.
    """

    def __init__(self, target: "TargetConfig", session: requests.Session | None = None,
                 version: str | None = None) -> None:
        if not target.url:
            raise WebhookError("WEBHOOK_URL is not set")
        parts = urlsplit(target.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"WEBHOOK_URL is not an http(s) URL: {redact_url(target.url)}")
        self._url = target.url
        self._timeout = (target.timeout_seconds, target.timeout_seconds)
        self._signer = Webhook(target.secret) if target.secret else None
        self._extra_headers = dict(target.headers)
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
            # No hidden retries: a retry is the delivery loop's decision (and a silent one could deliver twice).
            adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=4)
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
        try:
            response = self._session.post(self._url, data=body, headers=headers, timeout=self._timeout,
                                          allow_redirects=False, stream=True)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader) as exc:
            raise WebhookError(f"cannot send to {redact_url(self._url)}: {type(exc).__name__}") from None
        except requests.exceptions.Timeout:  # before ConnectionError: ConnectTimeout is both
            return self._failed("timeout", started)
        except requests.exceptions.SSLError:
            return self._failed("tls_error", started)
        except requests.exceptions.ConnectionError:
            return self._failed("connection_error", started)
        except requests.exceptions.RequestException:
            return self._failed("request_error", started)

        try:
            status = response.status_code
            excerpt = _read_excerpt(response, started + self._timeout[1])
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        finally:
            response.close()
        kind, error = classify_status(status)
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


def _read_excerpt(response: requests.Response, deadline: float) -> str | None:
    """Up to EXCERPT_CHARS of the answer, decoded leniently and made single-line. The status line has already
    arrived, so a body that fails or trickles past the attempt's deadline only shortens the excerpt."""
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

"""One log format for the whole service (the app's and Gunicorn's), with secrets redacted and correspondents masked.

Text lines look like ``2026-11-28T18:30:00Z INFO [1234] background.poller: BG_POLLER: ...``; ``LOG_FORMAT=json``
emits one JSON object per line with ``ts``, ``level``, ``logger``, ``message`` (plus ``exc`` for tracebacks).
The formatter is the last line of defence: every formatted line (message and traceback) has the configured secret
values replaced by ``***`` and every e-mail address other than the service's own ``EMAIL_ADDRESS`` masked as
``j***@example.com``. Call sites still mask what they log (``mask_address``); this catches what slips through.

It also keeps one record on one line whatever an email put into it (log forging): every C0/C1 control, DEL and the
Unicode line and paragraph separators in the message (template and arguments) and the logger name are written as
``\\xNN`` / ``\\uNNNN``, in both formats. A traceback stays readable: in the text format it follows on continuation
lines that all start with ``TRACEBACK_PREFIX`` (so no text an exception carries can pass for a record of its own),
in JSON it is the ``exc`` string; inside each of its lines the same characters are escaped.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any, Iterable

REDACTED = "***"
_EMAIL_RE = re.compile(r"(?<![\w.+-])([A-Za-z0-9._%+-]{1,64})@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")

# Every character that str.splitlines(), a terminal or a log viewer treats as a line break or a control:
# C0, DEL, C1, LINE SEPARATOR and PARAGRAPH SEPARATOR. A backslash is left alone (paths, regexes stay legible):
# the guarantee is one record per line, not a reversible encoding.
_CONTROL_ESCAPES: dict[int, str] = {
    **{code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))},
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
# Starts every continuation line of a text-format traceback; a record's first line starts with its timestamp.
TRACEBACK_PREFIX = "  | "

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_own_addresses: frozenset[str] = frozenset()
# Short-lived secrets (OAuth2 access tokens): redacted until a while after they expire, then dropped, so the list
# never grows with every token a long-running process was given.
_expiring: dict[str, float] = {}
_expiring_values: tuple[str, ...] = ()
EXPIRED_SECRET_GRACE_SECONDS = 300.0


def register_secrets(values: Iterable[str], own_addresses: Iterable[str] = ()) -> None:
    """Declare values that must never be printed, and addresses that may be (the service's own)."""
    global _secrets, _own_addresses
    with _lock:
        merged = set(_secrets) | {value for value in values if value and len(value) >= 3}
        _secrets = tuple(sorted(merged, key=len, reverse=True))
        _own_addresses = _own_addresses | {address.lower() for address in own_addresses if address}


def register_expiring_secret(value: str, expires_at: float, now: float | None = None) -> None:
    """Redact ``value`` until ``EXPIRED_SECRET_GRACE_SECONDS`` after ``expires_at``; expired ones are dropped here."""
    global _expiring_values
    now = time.time() if now is None else now
    with _lock:
        live = {secret: until for secret, until in _expiring.items() if until > now}
        if value and len(value) >= 3:
            live[value] = max(expires_at + EXPIRED_SECRET_GRACE_SECONDS, live.get(value, 0.0))
        _expiring.clear()
        _expiring.update(live)
        _expiring_values = tuple(sorted(live, key=len, reverse=True))


def expiring_secret_count() -> int:
    """How many short-lived secrets are redacted now (bounded: expired ones are dropped)."""
    return len(_expiring_values)


def mask_address(address: str | None) -> str:
    """``john@example.com`` → ``j***@example.com``; anything without an ``@`` → ``***``."""
    if not address:
        return ""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        return REDACTED
    return f"{local[0]}***@{domain.lower()}"


def scrub(text: str) -> str:
    """Redact secrets and mask foreign addresses in an arbitrary string (logs, error pages)."""
    for secret in _secrets + _expiring_values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    own = _own_addresses

    def _mask(match: re.Match[str]) -> str:
        full = match.group(0)
        if full.lower() in own:
            return full
        return mask_address(full)

    return _EMAIL_RE.sub(_mask, text)


def scrub_value(value: Any) -> Any:
    """Every string of a JSON-like value through ``scrub`` (secrets out, correspondents masked)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: scrub_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_value(item) for item in value]
    return value


def escape_controls(text: str) -> str:
    """Write every control character and line/paragraph separator of ``text`` as ``\\xNN`` / ``\\uNNNN``."""
    return text.translate(_CONTROL_ESCAPES)


def _traceback_lines(exc_text: str) -> list[str]:
    """A formatted traceback's own lines (split at ``\\n`` only), each with its other controls escaped."""
    return [escape_controls(line) for line in exc_text.split("\n")]


class ServiceFormatter(logging.Formatter):
    """Text or JSON formatter that scrubs every line it emits."""

    def __init__(self, fmt_kind: str = "text") -> None:
        super().__init__()
        self.kind = fmt_kind

    @staticmethod
    def _timestamp(record: logging.LogRecord) -> str:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{base}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format at a call site must not kill the logging thread
            message = f"{record.msg!r} (bad log arguments)"
        # Scrub first (secrets and addresses are matched as they were logged), then escape what is left.
        message = escape_controls(scrub(message))
        name = escape_controls(record.name)
        exc_lines = _traceback_lines(scrub(self.formatException(record.exc_info))) if record.exc_info else None
        if self.kind == "json":
            doc = {"ts": self._timestamp(record), "level": record.levelname, "logger": name,
                   "message": message, "pid": record.process}
            if exc_lines:
                doc["exc"] = "\n".join(exc_lines)
            return json.dumps(doc, ensure_ascii=False)
        line = f"{self._timestamp(record)} {record.levelname} [{record.process}] {name}: {message}"
        if exc_lines:
            line = "\n".join([line, *(f"{TRACEBACK_PREFIX}{exc_line}" for exc_line in exc_lines)])
        return line


def logging_config_dict(fmt_kind: str, level: str) -> dict:
    """A dictConfig for the app and Gunicorn's loggers (used by gunicorn.conf.py's ``logconfig_dict``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": "log_setup.ServiceFormatter", "fmt_kind": fmt_kind}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            # urllib3 and botocore would log request URLs (the webhook URL is a capability) at DEBUG.
            "urllib3": {"level": "WARNING"},
            "botocore": {"level": "WARNING"},
            "boto3": {"level": "WARNING"},
            "imapclient": {"level": "WARNING"},
        },
    }


def configure_logging(settings) -> None:
    """Install the service formatter on the root logger once per process (idempotent)."""
    register_secrets(settings.secret_values(), own_addresses=[settings.email_address or ""])
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler.formatter, ServiceFormatter):
            handler.formatter.kind = settings.log_format
            root.setLevel(settings.log_level.upper())
            return
    if any(type(handler).__name__ == "LogCaptureHandler" for handler in root.handlers):
        # Under pytest's log capture: keep its handlers, only make sure our level applies.
        root.setLevel(min(root.level or logging.WARNING, logging.getLevelName(settings.log_level.upper())))
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ServiceFormatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in ("urllib3", "botocore", "boto3", "imapclient"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""The UTC timestamps of render-signal's interfaces, formatted and parsed in one place.

Payloads, status documents and lease snapshots write ``YYYY-MM-DDTHH:MM:SSZ`` (``iso_utc``), or with milliseconds
where successive values must be told apart (``iso_utc_ms``); ``epoch_of`` reads either back. The formatters take
untrusted values (published documents from other processes) and answer None instead of raising.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def _seconds(moment: datetime) -> str:
    # Not strftime("%Y"): glibc does not pad years below 1000 (a Date header can say year 500).
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z")


def format_utc(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (a naive datetime is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _seconds(moment.astimezone(timezone.utc))


def utc_now() -> str:
    return format_utc(datetime.now(timezone.utc))


def _moment(epoch: Any) -> datetime | None:
    if epoch is None:
        return None
    try:
        return datetime.fromtimestamp(float(epoch), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def iso_utc(epoch: Any) -> str | None:
    moment = _moment(epoch)
    return None if moment is None else _seconds(moment)


def iso_utc_ms(epoch: Any) -> str | None:
    """Millisecond precision, for values that tell successive publications apart."""
    moment = _moment(epoch)
    return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_of(iso: Any) -> float | None:
    """Epoch seconds of an ISO 8601 timestamp (``Z`` or an offset); None when absent or malformed."""
    if not isinstance(iso, str) or not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

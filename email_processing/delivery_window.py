"""When a target's delivery window is open: ``window_opens_at(window, now)`` is None while it is, else the epoch
second it next opens (the item's ``held_until``).

Pure: the time is a parameter, never read here. A window (``config.DeliveryWindow``) is a set of local-time
intervals in ``window.timezone`` (zoneinfo, with the tzdata package), one per local date D whose weekday is in
``days`` (0 = Monday) and which is not in ``closed_dates``:

- ``opens`` < ``closes``: [D opens, D closes);
- ``opens`` > ``closes``: [D opens, D+1 closes): the night belongs to the day it starts on, so a Friday 22:00 →
  06:00 window is open on Saturday at 05:00 even when Saturday is not a listed day, and a closed date closes the
  night that starts on it (not the one that ends on it);
- ``opens`` == ``closes``: the 24 hours [D opens, D+1 opens): the whole calendar day for the default 00:00 / 00:00,
  and the limit of a window spanning midnight otherwise.

Clock changes: a local time that does not exist (the hour skipped in spring) stands for the first instant after the
gap, for an opening and a closing alike (a window opening at 02:30 on the night Paris goes 02:00 → 03:00 opens at
03:00 CEST); a local time that happens twice (the hour repeated in autumn) stands for its first occurrence. An
interval can therefore be longer or shorter than its wall-clock length on those days, or empty (opening and closing
both inside the gap): an empty interval is never open.

A window whose every interval in the next ``SEARCH_DAYS`` days is closed (its listed weekdays all in
``closed_dates``) cannot say when it opens: ``window_opens_at`` raises ``WindowNeverOpens`` (a ValueError). The
configuration loader calls ``check_window`` at start-up so that such a window (or an unknown time zone) is a
configuration error rather than a surprise in the delivery loop.
"""

from __future__ import annotations

import datetime
import math
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config import DeliveryWindow

SEARCH_DAYS = 400  # more than a year of closed dates, plus the weeks around them


class WindowNeverOpens(ValueError):
    """The window has no open interval in the next ``SEARCH_DAYS`` days."""


def window_opens_at(window: DeliveryWindow, now: float) -> float | None:
    """None when ``window`` is open at epoch second ``now``, else the epoch second it next opens."""
    zone = _zone(window.timezone)
    today = datetime.datetime.fromtimestamp(now, zone).date()
    # Yesterday's interval may span midnight into today; one longer than a day never exists.
    for offset in range(-1, SEARCH_DAYS + 1):
        day = today + datetime.timedelta(days=offset)
        interval = _interval(window, zone, day)
        if interval is None:
            continue
        start, end = interval
        if end <= now:
            continue
        return None if start <= now else start
    raise WindowNeverOpens(f"delivery window in {window.timezone} does not open in the next {SEARCH_DAYS} days")


def check_window(window: DeliveryWindow, now: float) -> None:
    """ValueError when ``window`` names an unknown time zone or does not open within ``SEARCH_DAYS`` of ``now``
    (for the configuration loader)."""
    window_opens_at(window, now)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)  # cached by zoneinfo: one object per name
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


def _interval(window: DeliveryWindow, zone: ZoneInfo, day: datetime.date) -> tuple[float, float] | None:
    """The epoch-second interval [start, end) of the window that starts on local date ``day``, or None."""
    if day.weekday() not in window.days or day in window.closed_dates:
        return None
    start = _instant(day, window.opens, zone)
    if window.opens < window.closes:
        end = _instant(day, window.closes, zone)
    else:
        end = _instant(day + datetime.timedelta(days=1), window.closes, zone)
    return (start, end) if start < end else None


def _instant(day: datetime.date, at: datetime.time, zone: ZoneInfo) -> float:
    """The epoch second of local ``day`` ``at`` in ``zone``: the first occurrence of a repeated time, the first
    instant after the gap for a skipped one."""
    wall = datetime.datetime.combine(day, at.replace(tzinfo=None))
    # fold=0: the offset before a transition. For a repeated time that is its first occurrence; for a skipped time
    # it lands after the gap (02:30 CET = 03:30 CEST), and the instant wanted is the gap's end.
    after = wall.replace(tzinfo=zone, fold=0).timestamp()
    if datetime.datetime.fromtimestamp(after, zone).replace(tzinfo=None) == wall:
        return after
    before = wall.replace(tzinfo=zone, fold=1).timestamp()  # the offset after the transition: before the gap
    return _transition_between(before, after, zone)


def _transition_between(before: float, after: float, zone: ZoneInfo) -> float:
    """The first whole second in (before, after] with the UTC offset of ``after`` (zone transitions fall on whole
    seconds; the span is at most the size of a gap, so about a dozen steps)."""
    offset_after = datetime.datetime.fromtimestamp(after, zone).utcoffset()
    low, high = math.floor(before), math.ceil(after)  # offset(low) differs, offset(high) is offset_after
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return float(high)

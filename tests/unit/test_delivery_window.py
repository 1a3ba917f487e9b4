"""Delivery windows (issue 17, "Delivery per target"): open or the epoch second of the next opening, local time in
the window's zone, midnight spans belonging to the day they start on, closed dates, and the clock changes of
Europe/Paris (2026-03-29 02:00 → 03:00, 2026-10-25 03:00 → 02:00) and America/New_York (2026-03-08 02:00 → 03:00,
2026-11-01 02:00 → 01:00).

Every instant is written in UTC (``utc``), independently of zoneinfo, with the local time beside it.
"""

from __future__ import annotations

import datetime
from datetime import date, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import DeliveryWindow
from email_processing.delivery_window import SEARCH_DAYS, WindowNeverOpens, check_window, window_opens_at

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)
WEEKDAYS = (MON, TUE, WED, THU, FRI)


def utc(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DD HH:MM[:SS]`` UTC."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


def paris(**fields) -> DeliveryWindow:
    return DeliveryWindow(timezone="Europe/Paris", **fields)


def new_york(**fields) -> DeliveryWindow:
    return DeliveryWindow(timezone="America/New_York", **fields)


OFFICE = paris(days=WEEKDAYS, opens=time(8), closes=time(19))


# --- office hours -----------------------------------------------------------------------------------------------

def test_a_window_that_is_open_now_says_none():
    assert window_opens_at(OFFICE, utc("2026-06-10 10:00")) is None        # Wed 12:00 CEST


def test_a_window_is_open_from_its_opening_second_and_closed_from_its_closing_second():
    assert window_opens_at(OFFICE, utc("2026-06-10 06:00")) is None        # Wed 08:00 CEST: opens
    assert window_opens_at(OFFICE, utc("2026-06-10 16:59:59")) is None     # Wed 18:59:59
    assert window_opens_at(OFFICE, utc("2026-06-10 17:00")) == utc("2026-06-11 06:00")   # Wed 19:00 → Thu 08:00


def test_before_opening_it_gives_the_opening_of_the_same_day():
    assert window_opens_at(OFFICE, utc("2026-06-10 05:00")) == utc("2026-06-10 06:00")   # Wed 07:00 → 08:00
    assert window_opens_at(OFFICE, utc("2026-06-10 05:59:59.5")) == utc("2026-06-10 06:00")


def test_after_friday_closing_it_gives_monday_morning():
    monday_8 = utc("2026-06-15 06:00")
    assert window_opens_at(OFFICE, utc("2026-06-12 17:00")) == monday_8    # Fri 19:00
    assert window_opens_at(OFFICE, utc("2026-06-13 10:00")) == monday_8    # Sat noon
    assert window_opens_at(OFFICE, utc("2026-06-14 21:59")) == monday_8    # Sun 23:59


def test_the_time_is_local_to_the_windows_zone():
    # 09:00-17:00 in New York is 13:00-21:00 UTC in summer
    window = new_york(days=WEEKDAYS, opens=time(9), closes=time(17))
    assert window_opens_at(window, utc("2026-06-10 12:59")) == utc("2026-06-10 13:00")
    assert window_opens_at(window, utc("2026-06-10 20:59")) is None
    assert window_opens_at(window, utc("2026-06-10 21:00")) == utc("2026-06-11 13:00")


# --- whole days -------------------------------------------------------------------------------------------------

def test_equal_opening_and_closing_at_midnight_is_the_whole_calendar_day():
    weekend = paris(days=(SAT, SUN))                                       # the default 00:00 / 00:00
    assert window_opens_at(weekend, utc("2026-06-12 21:59:59")) == utc("2026-06-12 22:00")   # Fri 23:59:59 → Sat
    assert window_opens_at(weekend, utc("2026-06-13 22:00")) is None       # Sun 00:00
    assert window_opens_at(weekend, utc("2026-06-14 21:59:59")) is None    # Sun 23:59:59
    assert window_opens_at(weekend, utc("2026-06-14 22:00")) == utc("2026-06-19 22:00")      # Mon → next Sat


def test_equal_opening_and_closing_at_another_time_is_24_hours_from_it():
    mondays = paris(days=(MON,), opens=time(8), closes=time(8))
    assert window_opens_at(mondays, utc("2026-06-15 05:59")) == utc("2026-06-15 06:00")      # Mon 07:59
    assert window_opens_at(mondays, utc("2026-06-16 05:59")) is None       # Tue 07:59: Monday's day
    assert window_opens_at(mondays, utc("2026-06-16 06:00")) == utc("2026-06-22 06:00")      # Tue 08:00


def test_a_window_open_every_day_all_day_is_always_open():
    always = paris()
    for moment in ("2026-03-29 01:00", "2026-10-25 01:00", "2026-06-10 00:00", "2026-12-31 23:00"):
        assert window_opens_at(always, utc(moment)) is None


# --- midnight spans ---------------------------------------------------------------------------------------------

FRIDAY_NIGHTS = paris(days=(FRI,), opens=time(22), closes=time(6))


def test_a_window_spanning_midnight_belongs_to_the_day_it_starts_on():
    assert window_opens_at(FRIDAY_NIGHTS, utc("2026-06-12 19:59")) == utc("2026-06-12 20:00")  # Fri 21:59
    assert window_opens_at(FRIDAY_NIGHTS, utc("2026-06-12 20:00")) is None   # Fri 22:00
    assert window_opens_at(FRIDAY_NIGHTS, utc("2026-06-13 03:59:59")) is None  # Sat 05:59:59, Saturday unlisted
    assert window_opens_at(FRIDAY_NIGHTS, utc("2026-06-13 04:00")) == utc("2026-06-19 20:00")  # Sat 06:00


def test_the_night_ending_on_a_listed_day_is_not_that_days():
    # Thursday night ends on Friday morning: Friday is listed, Thursday is not, so Friday 05:00 is closed
    assert window_opens_at(FRIDAY_NIGHTS, utc("2026-06-12 03:00")) == utc("2026-06-12 20:00")


def test_consecutive_nights_leave_the_daytime_closed():
    nights = paris(opens=time(22), closes=time(6))
    assert window_opens_at(nights, utc("2026-06-10 02:00")) is None        # Wed 04:00
    assert window_opens_at(nights, utc("2026-06-10 10:00")) == utc("2026-06-10 20:00")   # Wed noon → 22:00


# --- closed dates -----------------------------------------------------------------------------------------------

def test_a_closed_date_keeps_the_window_shut_all_that_day():
    christmas = paris(days=WEEKDAYS, opens=time(8), closes=time(19), closed_dates=(date(2026, 12, 25),))
    # Thu 24th 19:00 CET → not Fri 25th, not the weekend: Mon 28th 08:00 CET
    assert window_opens_at(christmas, utc("2026-12-24 18:00")) == utc("2026-12-28 07:00")
    assert window_opens_at(christmas, utc("2026-12-25 11:00")) == utc("2026-12-28 07:00")
    assert window_opens_at(christmas, utc("2026-12-24 11:00")) is None     # the day before is open


def test_a_night_starting_on_a_closed_date_is_closed_all_night():
    nights = paris(opens=time(22), closes=time(6), closed_dates=(date(2026, 12, 24),))
    assert window_opens_at(nights, utc("2026-12-24 02:00")) is None        # 24th 03:00: the 23rd's night
    assert window_opens_at(nights, utc("2026-12-24 22:00")) == utc("2026-12-25 21:00")   # 24th 23:00 → 25th 22:00
    assert window_opens_at(nights, utc("2026-12-25 02:00")) == utc("2026-12-25 21:00")   # 25th 03:00: the 24th's


def test_a_closed_date_that_is_not_a_listed_day_changes_nothing():
    window = paris(days=WEEKDAYS, opens=time(8), closes=time(19), closed_dates=(date(2026, 6, 13),))   # a Saturday
    assert window_opens_at(window, utc("2026-06-12 17:00")) == utc("2026-06-15 06:00")


# --- clock changes ------------------------------------------------------------------------------------------------

def test_paris_office_hours_follow_the_spring_clock_change():
    daily = paris(opens=time(8), closes=time(19))
    # Sat 28 March 19:00 CET (+01:00) → Sun 29 March 08:00 CEST (+02:00) = 06:00 UTC, not 07:00
    assert window_opens_at(daily, utc("2026-03-28 18:00")) == utc("2026-03-29 06:00")
    assert window_opens_at(daily, utc("2026-03-29 16:59")) is None         # 18:59 CEST
    assert window_opens_at(daily, utc("2026-03-29 17:00")) == utc("2026-03-30 06:00")


def test_paris_office_hours_follow_the_autumn_clock_change():
    daily = paris(opens=time(8), closes=time(19))
    # Sat 24 October 19:00 CEST → Sun 25 October 08:00 CET = 07:00 UTC
    assert window_opens_at(daily, utc("2026-10-24 17:00")) == utc("2026-10-25 07:00")
    assert window_opens_at(daily, utc("2026-10-25 17:59")) is None         # 18:59 CET
    assert window_opens_at(daily, utc("2026-10-25 18:00")) == utc("2026-10-26 07:00")


def test_an_opening_at_a_skipped_local_time_opens_at_the_first_instant_after_the_gap():
    # 02:30 does not exist in Paris on 29 March 2026: 01:00 UTC is 02:00 CET and 03:00 CEST at once
    window = paris(opens=time(2, 30), closes=time(5))
    assert window_opens_at(window, utc("2026-03-29 00:30")) == utc("2026-03-29 01:00")   # 01:30 CET
    assert window_opens_at(window, utc("2026-03-29 00:59:59")) == utc("2026-03-29 01:00")
    assert window_opens_at(window, utc("2026-03-29 01:00")) is None        # 03:00 CEST
    assert window_opens_at(window, utc("2026-03-29 02:59:59")) is None     # 04:59:59 CEST
    assert window_opens_at(window, utc("2026-03-29 03:00")) == utc("2026-03-30 00:30")   # 05:00 → Mon 02:30 CEST


def test_a_closing_at_a_skipped_local_time_closes_at_the_first_instant_after_the_gap():
    window = paris(opens=time(1), closes=time(2, 30))
    assert window_opens_at(window, utc("2026-03-29 00:59:59")) is None     # 01:59:59 CET
    assert window_opens_at(window, utc("2026-03-29 01:00")) == utc("2026-03-29 23:00")   # 03:00 CEST → Mon 01:00


def test_a_window_entirely_inside_the_skipped_hour_does_not_open_that_day():
    window = paris(opens=time(2, 10), closes=time(2, 40))
    # Sun 29 March 01:00 CET → not that night: Mon 30 March 02:10 CEST = 00:10 UTC
    assert window_opens_at(window, utc("2026-03-29 00:00")) == utc("2026-03-30 00:10")
    assert window_opens_at(window, utc("2026-03-29 01:05")) == utc("2026-03-30 00:10")


def test_an_opening_at_a_repeated_local_time_opens_at_its_first_occurrence():
    # 02:30 happens twice in Paris on 25 October 2026: 00:30 UTC (CEST) and 01:30 UTC (CET)
    window = paris(opens=time(2, 30), closes=time(4))
    assert window_opens_at(window, utc("2026-10-25 00:00")) == utc("2026-10-25 00:30")   # 02:00 CEST
    assert window_opens_at(window, utc("2026-10-25 00:30")) is None
    assert window_opens_at(window, utc("2026-10-25 01:15")) is None        # 02:15 CET, the second pass
    assert window_opens_at(window, utc("2026-10-25 02:59:59")) is None     # 03:59:59 CET
    assert window_opens_at(window, utc("2026-10-25 03:00")) == utc("2026-10-26 01:30")   # 04:00 CET → Mon 02:30


def test_a_closing_at_a_repeated_local_time_closes_at_its_first_occurrence():
    window = paris(opens=time(0), closes=time(2, 30))
    assert window_opens_at(window, utc("2026-10-25 00:29:59")) is None     # 02:29:59 CEST
    # 02:15 CET, the second pass through the hour: the window closed at the first 02:30
    assert window_opens_at(window, utc("2026-10-25 01:15")) == utc("2026-10-25 23:00")


def test_new_york_office_hours_follow_both_clock_changes():
    office = new_york(days=WEEKDAYS, opens=time(9), closes=time(17))
    # Fri 6 March 17:00 EST (-05:00) → Mon 9 March 09:00 EDT (-04:00) = 13:00 UTC
    assert window_opens_at(office, utc("2026-03-06 22:00")) == utc("2026-03-09 13:00")
    # Fri 30 October 17:00 EDT → Mon 2 November 09:00 EST = 14:00 UTC
    assert window_opens_at(office, utc("2026-10-30 21:00")) == utc("2026-11-02 14:00")


def test_a_new_york_night_spanning_the_spring_change_is_an_hour_shorter():
    saturday_nights = new_york(days=(SAT,), opens=time(22), closes=time(6))
    # Sat 7 March 22:00 EST = 03:00 UTC Sunday; Sun 06:00 EDT = 10:00 UTC: 7 hours
    assert window_opens_at(saturday_nights, utc("2026-03-08 02:59")) == utc("2026-03-08 03:00")
    assert window_opens_at(saturday_nights, utc("2026-03-08 09:59:59")) is None
    assert window_opens_at(saturday_nights, utc("2026-03-08 10:00")) == utc("2026-03-15 02:00")   # EDT now


def test_a_new_york_night_spanning_the_autumn_change_is_an_hour_longer():
    saturday_nights = new_york(days=(SAT,), opens=time(22), closes=time(6))
    # Sat 31 October 22:00 EDT = 02:00 UTC Sunday; Sun 06:00 EST = 11:00 UTC: 9 hours
    assert window_opens_at(saturday_nights, utc("2026-11-01 01:59")) == utc("2026-11-01 02:00")
    assert window_opens_at(saturday_nights, utc("2026-11-01 10:59:59")) is None
    assert window_opens_at(saturday_nights, utc("2026-11-01 11:00")) == utc("2026-11-08 03:00")


def test_a_new_york_opening_in_the_skipped_hour_opens_at_three_edt():
    window = new_york(days=(SUN,), opens=time(2, 15), closes=time(4))
    # 02:15 does not exist on 8 March 2026: the gap ends at 07:00 UTC (03:00 EDT)
    assert window_opens_at(window, utc("2026-03-08 06:30")) == utc("2026-03-08 07:00")   # 01:30 EST


# --- a window that never opens, bad zones -------------------------------------------------------------------------

def test_a_window_closed_on_every_listed_day_of_the_search_span_raises():
    start = date(2026, 6, 15)   # a Monday
    mondays = tuple(start + datetime.timedelta(weeks=week) for week in range(SEARCH_DAYS // 7 + 2))
    window = paris(days=(MON,), closed_dates=mondays)
    with pytest.raises(WindowNeverOpens):
        window_opens_at(window, utc("2026-06-14 12:00"))
    with pytest.raises(ValueError, match="does not open in the next 400 days"):
        check_window(window, utc("2026-06-14 12:00"))


def test_a_window_reopening_after_a_long_closure_within_the_search_span_gives_that_date():
    # Given every day closed for 300 days
    closed = tuple(date(2026, 6, 15) + datetime.timedelta(days=n) for n in range(300))
    window = paris(closed_dates=closed)
    # Then it opens at local midnight of the 301st day (2027-04-11, CEST)
    assert window_opens_at(window, utc("2026-06-15 10:00")) == utc("2027-04-10 22:00")
    check_window(window, utc("2026-06-15 10:00"))


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_an_unknown_time_zone_is_a_value_error(zone):
    with pytest.raises(ValueError, match="unknown time zone"):
        check_window(DeliveryWindow(timezone=zone), utc("2026-06-10 10:00"))


def test_check_window_accepts_an_ordinary_window():
    check_window(OFFICE, utc("2026-06-10 10:00"))


# --- properties -------------------------------------------------------------------------------------------------

windows = st.builds(
    DeliveryWindow,
    timezone=st.sampled_from(["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"]),
    days=st.lists(st.integers(0, 6), min_size=1, max_size=7, unique=True).map(tuple),
    opens=st.times().map(lambda moment: moment.replace(microsecond=0)),
    closes=st.times().map(lambda moment: moment.replace(microsecond=0)),
)
moments = st.floats(min_value=utc("2025-01-01 00:00"), max_value=utc("2028-01-01 00:00"))


@settings(max_examples=300, deadline=None)
@given(window=windows, now=moments)
def test_the_next_opening_is_later_than_now_and_the_window_is_open_then(window, now):
    opens_at = window_opens_at(window, now)
    if opens_at is None:
        return
    assert opens_at > now
    assert window_opens_at(window, opens_at) is None
    # and closed at every sampled instant before it
    for fraction in (0.0, 0.25, 0.5, 0.75, 0.999):
        moment = now + (opens_at - now) * fraction
        if moment < opens_at:
            assert window_opens_at(window, moment) is not None

"""UTC timestamps: one format for payload, status and history, read back by epoch_of, tolerant of bad input."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from timestamps import epoch_of, format_utc, iso_utc, iso_utc_ms

MOMENT = 1_748_944_805.25  # 2025-06-03T10:00:05.250Z


def test_epoch_seconds_are_written_in_utc_to_the_second_or_millisecond():
    assert iso_utc(MOMENT) == "2025-06-03T10:00:05Z"
    assert iso_utc_ms(MOMENT) == "2025-06-03T10:00:05.250Z"


def test_a_datetime_is_written_in_utc_and_a_naive_one_is_taken_as_utc():
    assert format_utc(datetime(2025, 6, 3, 12, 0, 5, tzinfo=timezone(timedelta(hours=2)))) == "2025-06-03T10:00:05Z"
    assert format_utc(datetime(2025, 6, 3, 10, 0, 5)) == "2025-06-03T10:00:05Z"


@pytest.mark.parametrize("value", [None, "soon", float("nan"), 1e20, object()])
def test_a_value_that_is_no_time_gives_none(value):
    assert iso_utc(value) is None and iso_utc_ms(value) is None


def test_written_timestamps_read_back_to_their_epoch():
    assert epoch_of(iso_utc_ms(MOMENT)) == MOMENT
    assert epoch_of(iso_utc(MOMENT)) == int(MOMENT)


@pytest.mark.parametrize("value", [None, "", "yesterday", 12.5, {"at": 1}])
def test_anything_but_an_iso_text_reads_as_none(value):
    assert epoch_of(value) is None

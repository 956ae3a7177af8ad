"""Fire times of cron and fixed-rate schedules, daylight saving included
(DESIGN.md, "Recurring tasks": Debian cron's rules). Every time is naive UTC.

The 2026 transitions used here:
- Europe/Berlin: 29 March 02:00 CET -> 03:00 CEST (01:00 UTC);
  25 October 03:00 CEST -> 02:00 CET (01:00 UTC), 02:00-03:00 twice.
- America/New_York: 8 March 02:00 EST -> 03:00 EDT (07:00 UTC);
  1 November 02:00 EDT -> 01:00 EST (06:00 UTC), 01:00-02:00 twice.
"""

import itertools
import time
from datetime import datetime, timedelta

import pytest

from geventq.cadence import Cadence, InvalidCadence, NeverFires


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def fires(cron: str, zone: str, after: str, count: int = 3) -> list[str]:
    cadence = Cadence.of(cron, None, zone)
    return [f"{t:%Y-%m-%d %H:%M}" for t in cadence.fires_after(utc(after), count)]


# --- a fixed time in a skipped hour fires once, right after the gap -------------


def test_berlin_2am_in_the_spring_gap_fires_at_3_cest():
    # 02:00 does not exist on 29 March: it runs at 03:00 CEST (01:00 UTC), once.
    assert fires("0 2 * * *", "Europe/Berlin", "2026-03-27 12:00") == [
        "2026-03-28 01:00",  # 02:00 CET
        "2026-03-29 01:00",  # 03:00 CEST, right after the gap
        "2026-03-30 00:00",  # 02:00 CEST
    ]


def test_new_york_2am_in_the_spring_gap_fires_at_3_edt():
    assert fires("0 2 * * *", "America/New_York", "2026-03-06 12:00") == [
        "2026-03-07 07:00",  # 02:00 EST
        "2026-03-08 07:00",  # 03:00 EDT, right after the gap
        "2026-03-09 06:00",  # 02:00 EDT
    ]


def test_half_past_one_is_unaffected_by_either_spring_gap():
    assert fires("30 1 * * *", "Europe/Berlin", "2026-03-27 12:00") == [
        "2026-03-28 00:30",
        "2026-03-29 00:30",  # 01:30 CET, before the gap
        "2026-03-29 23:30",  # 01:30 CEST
    ]
    assert fires("30 1 * * *", "America/New_York", "2026-03-07 00:00") == [
        "2026-03-07 06:30",
        "2026-03-08 06:30",  # 01:30 EST, before the gap
        "2026-03-09 05:30",  # 01:30 EDT
    ]


# --- a fixed time in a repeated hour fires once, at its first occurrence --------


def test_berlin_2am_in_the_repeated_hour_fires_once():
    assert fires("0 2 * * *", "Europe/Berlin", "2026-10-23 12:00") == [
        "2026-10-24 00:00",  # 02:00 CEST
        "2026-10-25 00:00",  # 02:00 CEST, the first 02:00; not again at 02:00 CET
        "2026-10-26 01:00",  # 02:00 CET
    ]


def test_new_york_half_past_one_in_the_repeated_hour_fires_once():
    assert fires("30 1 * * *", "America/New_York", "2026-10-30 12:00") == [
        "2026-10-31 05:30",  # 01:30 EDT
        "2026-11-01 05:30",  # 01:30 EDT, the first 01:30; not again at 01:30 EST
        "2026-11-02 06:30",  # 01:30 EST
    ]


def test_new_york_asked_during_the_second_pass_never_answers_the_past():
    # 06:15 UTC is 01:15 EST, the second pass through 01:00-02:00. On the wall
    # clock 01:30 is still ahead, but that 01:30 (EDT) was 05:30 UTC: it fired.
    cadence = Cadence.of("30 1 * * *", None, "America/New_York")
    assert cadence.next_after(utc("2026-11-01 06:15")) == utc("2026-11-02 06:30")
    # and from the fire itself, the next is tomorrow's, not the second 01:30
    assert cadence.next_after(utc("2026-11-01 05:30")) == utc("2026-11-02 06:30")


def test_new_york_2am_after_the_repeated_hour_is_unaffected():
    assert fires("0 2 * * *", "America/New_York", "2026-10-30 12:00") == [
        "2026-10-31 06:00",  # 02:00 EDT
        "2026-11-01 07:00",  # 02:00 EST (01:00-02:00 repeats, 02:00 comes once)
        "2026-11-02 07:00",
    ]


def test_berlin_half_past_one_on_the_autumn_day():
    assert fires("30 1 * * *", "Europe/Berlin", "2026-10-23 12:00") == [
        "2026-10-23 23:30",  # 01:30 CEST on the 24th
        "2026-10-24 23:30",  # 01:30 CEST on the 25th, before the repeated hour
        "2026-10-26 00:30",  # 01:30 CET
    ]


# --- `*` in the hour field follows elapsed time -------------------------------


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/Berlin", "2026-03-28 22:00"),
        ("Europe/Berlin", "2026-10-24 22:00"),
        ("America/New_York", "2026-03-08 04:00"),
        ("America/New_York", "2026-11-01 03:00"),
    ],
)
def test_hourly_fires_every_60_minutes_across_each_transition(zone, start):
    cadence = Cadence.of("0 * * * *", None, zone)
    times = cadence.fires_after(utc(start), 6)
    assert times[0] == utc(start) + timedelta(hours=1)
    assert all(later - earlier == timedelta(hours=1) for earlier, later in itertools.pairwise(times))


def test_every_30_minutes_across_the_berlin_autumn_transition():
    cadence = Cadence.of("*/30 * * * *", None, "Europe/Berlin")
    times = cadence.fires_after(utc("2026-10-24 23:50"), 6)
    assert [f"{t:%H:%M}" for t in times] == ["00:00", "00:30", "01:00", "01:30", "02:00", "02:30"]


# --- fixed rate: elapsed time, the zone plays no part -------------------------


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_interval_runs_on_elapsed_time_across_the_transitions(zone):
    cadence = Cadence.of(None, 5400, zone)  # every 90 minutes
    for start in ("2026-03-28 20:00", "2026-03-08 03:00", "2026-10-24 21:00", "2026-11-01 03:00"):
        times = cadence.fires_after(utc(start), 8)
        gaps = {later - earlier for earlier, later in itertools.pairwise(times)}
        assert gaps == {timedelta(seconds=5400)}
        # anchored on the epoch, so the cadence does not depend on when it is asked
        assert all((t - datetime(1970, 1, 1)).total_seconds() % 5400 == 0 for t in times)


def test_interval_next_after_is_strictly_after():
    cadence = Cadence.of(None, 10, "UTC")
    assert cadence.next_after(utc("2026-01-01 00:00:10")) == utc("2026-01-01 00:00:20")
    assert cadence.next_after(utc("2026-01-01 00:00:09.999")) == utc("2026-01-01 00:00:10")


def test_every_second():
    cadence = Cadence.of(None, 1, "UTC")
    assert cadence.fires_after(utc("2026-01-01 00:00:00.5"), 3) == [
        utc("2026-01-01 00:00:01"),
        utc("2026-01-01 00:00:02"),
        utc("2026-01-01 00:00:03"),
    ]


# --- the latest fire before a moment ---------------------------------------


def test_last_before_for_cron_and_interval():
    minute = Cadence.of("* * * * *", None, "UTC")
    assert minute.last_before(utc("2026-01-01 10:00:30"), utc("2026-01-01 09:00")) == utc("2026-01-01 10:00")
    assert minute.last_before(utc("2026-01-01 10:00"), utc("2026-01-01 09:00")) == utc("2026-01-01 09:59")
    assert minute.last_before(utc("2026-01-01 10:00"), utc("2026-01-01 10:00")) is None
    yearly = Cadence.of("@yearly", None, "UTC")
    assert yearly.last_before(utc("2026-06-01"), utc("2020-01-01 00:00:01")) == utc("2026-01-01")
    assert yearly.last_before(utc("2026-06-01"), utc("2026-01-01 00:00:01")) is None
    rate = Cadence.of(None, 60, "UTC")
    assert rate.last_before(utc("2026-01-01 10:00:30"), utc("2026-01-01 09:00")) == utc("2026-01-01 10:00")
    assert rate.last_before(utc("2026-01-01 10:00:00"), utc("2026-01-01 09:00")) == utc("2026-01-01 09:59")


def test_last_before_is_fast_after_a_long_downtime():
    started = time.perf_counter()
    minute = Cadence.of("* * * * *", None, "Europe/Berlin")
    assert minute.last_before(utc("2026-02-01 10:00:30"), utc("2026-01-01")) == utc("2026-02-01 10:00")
    second = Cadence.of(None, 1, "UTC")
    assert second.last_before(utc("2026-12-01 10:00:30"), utc("2026-01-01")) == utc("2026-12-01 10:00:29")
    assert time.perf_counter() - started < 1.0  # a few hundred steps, not a month of minutes


# --- parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "same_as"),
    [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"), ("@YEARLY", "0 0 1 1 *")],
)
def test_aliases(alias, same_as):
    start = utc("2026-05-05 05:05")
    assert Cadence.of(alias, None).fires_after(start, 3) == Cadence.of(same_as, None).fires_after(start, 3)


@pytest.mark.parametrize(
    ("cron", "interval", "zone", "field", "words"),
    [
        ("* * * * *", 60, "UTC", "cron", "exactly one"),
        (None, None, "UTC", "cron", "exactly one"),
        ("61 * * * *", None, "UTC", "cron", "Bad minute"),
        ("* * * *", None, "UTC", "cron", "5 fields"),
        ("0 * * * * *", None, "UTC", "cron", "5 fields"),
        ("@reboot", None, "UTC", "cron", "unknown alias"),
        ("every day", None, "UTC", "cron", "5 fields"),
        ("0 0 30 2 *", None, "UTC", "cron", "Bad day-of-month"),
        ("* * * * *", None, "Mars/Olympus", "timezone", "unknown time zone"),
        ("* * * * *", None, "../etc/passwd", "timezone", "unknown time zone"),
        (None, 60, "", "timezone", "IANA"),
        (None, 0, "UTC", "interval_seconds", "from 1"),
        (None, 366 * 86400 + 1, "UTC", "interval_seconds", "from 1"),
        (None, True, "UTC", "interval_seconds", "integer"),
    ],
)
def test_bad_cadences_name_their_field(cron, interval, zone, field, words):
    with pytest.raises(InvalidCadence) as raised:
        Cadence.of(cron, interval, zone)
    assert raised.value.field == field
    assert words in str(raised.value)
    assert str(raised.value).startswith(f"{field}: ")


def test_a_cron_that_never_fires_is_refused():
    # February 29th on a Monday: 2044, within 50 years, so it is accepted ...
    assert Cadence.of("0 0 29 2 *", None, "UTC").next_after(utc("2026-01-01")) == utc("2028-02-29")
    # ... while a date that never comes is not
    with pytest.raises(InvalidCadence):
        Cadence.of("0 0 31 4 *", None, "UTC")
    assert issubclass(NeverFires, InvalidCadence)


def test_descriptions():
    assert Cadence.of(None, 1, "UTC").describe() == "every second"
    assert Cadence.of(None, 300, "UTC").describe() == "every 5 minutes"
    assert Cadence.of(None, 90, "UTC").describe() == "every 90 seconds"
    assert Cadence.of(None, 86400, "UTC").describe() == "every day"
    assert Cadence.of("0 2 * * *", None, "Europe/Berlin").describe() == "At 02:00 every day (Europe/Berlin)"

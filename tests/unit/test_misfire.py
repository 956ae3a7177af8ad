"""Misfire planning (DESIGN.md, "Recurring tasks"): on-time fires keep the
cadence; a late run of fires is settled by the policy skip, once or all."""

import time
from datetime import datetime

import pytest

from geventq.cadence import Cadence
from geventq.misfire import FirePlan, initial_fire, plan_fires

EVERY_MINUTE = Cadence.of("* * * * *", None, "UTC")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def plan(due: str, now: str, policy: str = "once", grace: float = 60, max_catchup: int = 100) -> FirePlan:
    return plan_fires(
        EVERY_MINUTE, utc(due), utc(now), policy=policy, grace_seconds=grace, max_catchup=max_catchup
    )


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_an_on_time_fire_gets_its_task_and_keeps_the_cadence(policy):
    step = plan("2026-01-01 10:00", "2026-01-01 10:00:59", policy)
    assert step == FirePlan((utc("2026-01-01 10:00"),), None, utc("2026-01-01 10:01"), late=False)


def test_several_on_time_fires_are_taken_one_per_step():
    # A server that was stalled 90 s with a grace of 120 s: every fire is on time.
    step = plan("2026-01-01 10:00", "2026-01-01 10:01:30", grace=120)
    assert step.enqueue == (utc("2026-01-01 10:00"),)
    assert step.next_fire_at == utc("2026-01-01 10:01")  # already due: the next step takes it


def test_skip_records_the_latest_late_fire_as_missed():
    step = plan("2026-01-01 10:00", "2026-01-01 10:10:30", "skip")
    # late: every fire before 10:09:30; 10:10 is 30 s old, on time
    assert step == FirePlan((), utc("2026-01-01 10:09"), utc("2026-01-01 10:10"), late=True)


def test_once_runs_the_latest_late_fire():
    step = plan("2026-01-01 10:00", "2026-01-01 10:10:30", "once")
    assert step == FirePlan((utc("2026-01-01 10:09"),), None, utc("2026-01-01 10:10"), late=True)


def test_all_runs_every_late_fire_oldest_first():
    step = plan("2026-01-01 10:00", "2026-01-01 10:10:30", "all")
    assert step.enqueue == tuple(utc(f"2026-01-01 10:0{minute}") for minute in range(10))
    assert step.missed is None
    assert step.next_fire_at == utc("2026-01-01 10:10")


def test_all_stops_at_max_catchup_and_records_the_rest_as_missed():
    step = plan("2026-01-01 10:00", "2026-01-01 10:10:30", "all", max_catchup=3)
    assert step.enqueue == (utc("2026-01-01 10:00"), utc("2026-01-01 10:01"), utc("2026-01-01 10:02"))
    assert step.missed == utc("2026-01-01 10:09")
    assert step.fire_times == (*step.enqueue, step.missed)


def test_when_nothing_is_on_time_the_next_fire_is_after_now():
    step = plan("2026-01-01 10:00", "2026-01-01 10:10:30", "once", grace=10)
    assert step.enqueue == (utc("2026-01-01 10:10"),)
    assert step.next_fire_at == utc("2026-01-01 10:11")


@pytest.mark.parametrize("policy", ["skip", "once", "all"])
def test_a_week_of_downtime_on_an_every_second_schedule_is_planned_at_once(policy):
    started = time.perf_counter()
    step = plan_fires(
        Cadence.of(None, 1, "UTC"),
        utc("2026-01-01 00:00"),
        utc("2026-01-08 00:00:00.250"),
        policy=policy,
        grace_seconds=5,
        max_catchup=100,
    )
    assert time.perf_counter() - started < 0.5
    assert len(step.enqueue) == {"skip": 0, "once": 1, "all": 100}[policy]
    # the late run ends 5 s before now; the next fire is the first on-time one
    assert step.next_fire_at == utc("2026-01-07 23:59:56")
    if policy == "skip" or policy == "all":
        assert step.missed == utc("2026-01-07 23:59:55")


def test_a_next_fire_at_set_by_hand_off_the_cadence_still_fires():
    step = plan("2026-01-01 10:00:17", "2026-01-01 10:00:20")
    assert step.enqueue == (utc("2026-01-01 10:00:17"),)
    assert step.next_fire_at == utc("2026-01-01 10:01")


def test_a_schedule_starts_at_the_first_fire_after_now():
    assert initial_fire(EVERY_MINUTE, utc("2026-01-01 10:00:00")) == utc("2026-01-01 10:01")
    assert initial_fire(Cadence.of(None, 3600, "UTC"), utc("2026-01-01 10:20")) == utc("2026-01-01 11:00")

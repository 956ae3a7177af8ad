"""The decisions a limited claim makes from the counts it read under the
queue's lock (geventq/limits.py), and the cancel states of a claimed attempt."""

from datetime import datetime, timedelta

import gevent
import pytest

from geventq.attempts import ClaimedAttempts
from geventq.errors import TaskCancelled
from geventq.limits import (
    RATE_SLICES,
    QueueLimits,
    current_slice,
    global_room,
    pick_by_key,
    rate_room,
    seconds_until_rate_room,
    window_start,
)
from tests.unit.test_attempts import attempt

NOW = datetime(2026, 12, 5, 12, 0, 0, 500_000)


def test_limits_from_a_queue_row_and_what_is_on():
    limits = QueueLimits.from_row({"global_max_workers": 5, "rate_limit": 0, "rate_period": None})
    assert limits.any and limits.rate_period == 60 and limits.describe() == "global_max_workers=5"
    assert not QueueLimits.from_row({}).any and QueueLimits().describe() == "none"


def test_room_never_goes_negative_when_a_limit_was_lowered_under_running_tasks():
    limits = QueueLimits(global_max_workers=3, rate_limit=10)
    assert global_room(limits, 1) == 2 and global_room(limits, 7) == 0
    assert rate_room(limits, 4) == 6 and rate_room(limits, 12) == 0


def test_slices_are_aligned_to_the_epoch_so_every_server_agrees():
    limits = QueueLimits(rate_limit=100, rate_period=60)
    start, end = current_slice(NOW, limits)
    assert end - start == timedelta(seconds=60 / RATE_SLICES)
    assert start <= NOW < end and start == NOW.replace(microsecond=0)
    assert current_slice(NOW + timedelta(milliseconds=100), limits) == (start, end)
    assert window_start(NOW, limits) == NOW - timedelta(seconds=60)


def test_a_queue_at_its_rate_sleeps_until_the_oldest_slice_leaves_the_window():
    limits = QueueLimits(rate_limit=10, rate_period=2)
    first_end = NOW - timedelta(seconds=1.5)
    assert seconds_until_rate_room(first_end, NOW, limits) == pytest.approx(0.5)
    assert seconds_until_rate_room(NOW - timedelta(seconds=9), NOW, limits) == 0.0
    assert seconds_until_rate_room(None, NOW, limits) == pytest.approx(2 / RATE_SLICES)


def test_capped_keys_are_stepped_over_not_waited_behind():
    candidates = [{"id": i, "concurrency_key": key} for i, key in enumerate("aaabcbN")]
    candidates[-1]["concurrency_key"] = None  # no key: not limited
    running = {"a": 1}
    taken, skipped = pick_by_key(candidates, running, cap=1, wanted=10)
    assert [row["id"] for row in taken] == [3, 4, 6] and skipped == 4
    assert running == {"a": 1, "b": 1, "c": 1}


def test_picking_stops_at_what_was_wanted():
    candidates = [{"id": i, "concurrency_key": f"k{i}"} for i in range(10)]
    taken, skipped = pick_by_key(candidates, {}, cap=2, wanted=3)
    assert [row["id"] for row in taken] == [0, 1, 2] and skipped == 0


def test_cancel_states_of_a_claimed_attempt():
    claimed = ClaimedAttempts()
    a = attempt(1)
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "not_held"
    claimed.add([a])
    assert claimed.cancel("t", 1, a.retry_count + 1, TaskCancelled) == "not_held"  # another attempt
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "not_started"
    stopped = []

    def handler():
        try:
            gevent.sleep(10)
        except TaskCancelled:
            stopped.append(True)

    greenlet = gevent.spawn(handler)
    gevent.sleep(0)
    flag = claimed.handler_started(a, greenlet)
    assert not flag()
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "stopping" and flag()
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "already_stopping"
    greenlet.join(1)
    assert stopped == [True]
    claimed.handler_ended(a)
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "finished"
    assert flag(), "the flag stays raised for a thread that reads it late"
    claimed.settle(a)
    assert claimed.cancel("t", 1, a.retry_count, TaskCancelled) == "not_held"

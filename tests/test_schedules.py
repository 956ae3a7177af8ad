"""Recurring tasks across real executors (DESIGN.md, "Recurring tasks"):
exactly one task per fire with two servers, one of them on the
compare-and-set fallback, through a SIGKILL and a restart; overlap: skip;
a next_fire_at set back by hand; a disabled queue; and each misfire policy
after a real downtime (every server stopped, the clock moved on, servers back).

"The clock moved on" is done without waiting for real minutes: while every
server is down, next_fire_at is moved ten minutes into the past by SQL,
which is what ten minutes of downtime leave behind."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta

from tests.invariants import check_schedules
from tests.support import http, wait_for


def add_schedule(db, name: str, queue: str, **columns) -> int:
    columns = {"task_type": "scheduled", **columns}
    names = ", ".join(["name", "queue_name", *columns])
    marks = ", ".join(["%s"] * (len(columns) + 2))
    db.execute(f"INSERT INTO schedules ({names}) VALUES ({marks})", (name, queue, *columns.values()))
    return db.scalar("SELECT id FROM schedules WHERE name = %s", (name,))


def ledger(db, schedule_id: int) -> list[dict]:
    """The schedule's fires, oldest first, with `written`: created_at in UTC."""
    offset = db.scalar("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
    rows = db.query("SELECT * FROM schedule_fires WHERE schedule_id = %s ORDER BY fire_at", (schedule_id,))
    for row in rows:
        row["written"] = row["created_at"] - timedelta(seconds=offset)
    return rows


def assert_invariants(db) -> None:
    for result in check_schedules(db.connect()):
        assert result.ok, f"{result.name}: {result.violations[:5]}"


def counter(metrics_text: str, name: str, schedule: str) -> int:
    match = re.search(
        rf'geventq_schedule_{name}_total{{schedule="{schedule}",server="[^"]+"}} ([0-9.]+)', metrics_text
    )
    return int(float(match.group(1))) if match else 0


def fires_counted(metrics_text: str, schedule: str) -> int:
    match = re.search(
        rf'geventq_schedule_fires_total{{schedule="{schedule}",server="[^"]+"}} ([0-9.]+)', metrics_text
    )
    return int(float(match.group(1))) if match else 0


def test_two_servers_fire_each_time_once_through_a_kill(db, executors):
    # Given two servers, s2 on the compare-and-set fallback, and three
    # every-second schedules: one plain, one with overlap: skip whose tasks
    # take 2.5 s, one whose queue is disabled
    db.add_queue("sq", "sched_tasks", scan_interval=1)
    db.add_queue("off", "off_tasks", status=0)
    plain = add_schedule(db, "every_second", "sq", interval_seconds=1)
    overlapping = add_schedule(
        db, "no_overlap", "sq", interval_seconds=1, overlap="skip", task_params='{"seconds": 2.5}'
    )
    waiting = add_schedule(db, "queue_off", "off", interval_seconds=1)
    s1 = executors.start("s1")
    s2 = executors.start("s2", database={"claim_mode": "conditional_update"})
    wait_for(lambda: len(ledger(db, plain)) >= 4, 20, message="four fires")

    # When s1 is SIGKILLed, s2 fires alone (compare-and-set) until s1 is back
    s1.kill()
    alone_from = db.scalar("SELECT UTC_TIMESTAMP(3)")
    wait_for(lambda: sum(f["fire_at"] > alone_from for f in ledger(db, plain)) >= 3, 20, message="s2 alone")
    s1 = executors.start("s1")
    # and a next_fire_at set back by hand to a fire that happened fires nothing again
    first = ledger(db, plain)[0]["fire_at"]
    db.execute("UPDATE schedules SET next_fire_at = %s WHERE id = %s", (first, plain))
    wait_for(
        lambda: db.scalar(
            "SELECT next_fire_at > UTC_TIMESTAMP(3) - INTERVAL 2 SECOND FROM schedules WHERE id = %s",
            (plain,),
        ),
        10,
        message="the schedule moves on",
    )
    wait_for(lambda: len(ledger(db, plain)) >= 12, 20, message="twelve fires")
    counted = sum(
        fires_counted(http("GET", server.admin_url + "/metrics")[1], "every_second") for server in (s1, s2)
    )
    enqueued_so_far = len(ledger(db, plain))
    db.execute("UPDATE schedules SET status = 0")  # nothing more fires while we look
    for server in (s1, s2):
        server.terminate()
        assert server.wait(30) == 0

    # Then every fire time has one ledger row and one task, and no gap
    assert_invariants(db)
    fires = ledger(db, plain)
    times = [fire["fire_at"] for fire in fires]
    assert times == sorted(set(times))
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in itertools.pairwise(times))
    assert {fire["outcome"] for fire in fires} == {"enqueued"}
    # s1's metrics restarted with its process, so they count at most what was fired
    assert 0 < counted <= enqueued_so_far
    # every task ran, and ctx.schedule was the _schedule it carries (the handler checks)
    assert db.scalar("SELECT COUNT(*) FROM sched_tasks WHERE status <> 2") == 0
    # overlap: skip never ran two of its tasks at once, and skipped while one
    # ran (a run the SIGKILL cut short has no finish: its task was rescued)
    skipped = [fire for fire in ledger(db, overlapping) if fire["outcome"] == "skipped_overlap"]
    assert skipped and all(fire["task_id"] is None for fire in skipped)
    runs = db.query(
        "SELECT e.started_at, e.finished_at FROM executions e JOIN schedule_fires f "
        "ON f.task_table = 'sched_tasks' AND f.task_id = e.task_id AND f.schedule_id = %s "
        "WHERE e.finished_at IS NOT NULL ORDER BY e.started_at",
        (overlapping,),
    )
    assert len(runs) >= 2
    assert all(earlier["finished_at"] <= later["started_at"] for earlier, later in itertools.pairwise(runs))
    # a disabled queue's schedule still creates its tasks; they wait
    assert db.scalar("SELECT COUNT(*) FROM off_tasks WHERE status = 0") == len(ledger(db, waiting)) >= 3


def test_misfire_policies_after_a_downtime(db, executors):
    # Given every-minute schedules added by SQL (no next_fire_at: a server starts them)
    db.add_queue("sq", "sched_tasks", scan_interval=1)
    minute = {"interval_seconds": 60, "misfire_grace_seconds": 5}
    ids = {
        "skip": add_schedule(db, "skip", "sq", misfire_policy="skip", **minute),
        "once": add_schedule(db, "once", "sq", misfire_policy="once", **minute),
        "all": add_schedule(db, "all", "sq", misfire_policy="all", **minute),
        "all3": add_schedule(db, "all3", "sq", misfire_policy="all", max_catchup=3, **minute),
        "overlap": add_schedule(db, "overlap", "sq", misfire_policy="all", overlap="skip", **minute),
    }
    server = executors.start("s1")
    wait_for(
        lambda: db.scalar("SELECT COUNT(*) FROM schedules WHERE status = 1 AND next_fire_at IS NULL") == 0, 10
    )
    # When every server stops and ten minutes pass
    server.terminate()
    assert server.wait(30) == 0
    db.execute("UPDATE schedules SET next_fire_at = next_fire_at - INTERVAL 600 SECOND WHERE status = 1")
    due = {name: db.scalar("SELECT next_fire_at FROM schedules WHERE id = %s", (ids[name],)) for name in ids}
    assert all(not ledger(db, schedule_id) for schedule_id in ids.values())
    # and a server comes back
    restarted = executors.start("s1")
    wait_for(
        lambda: db.scalar("SELECT COUNT(*) FROM schedules WHERE next_fire_at <= UTC_TIMESTAMP(3)") == 0,
        15,
        message="every schedule caught up",
    )
    db.execute("UPDATE schedules SET status = 0")
    metrics = http("GET", restarted.admin_url + "/metrics")[1]
    restarted.terminate()
    assert restarted.wait(30) == 0

    # Then each policy did what it says with the late fires
    late = {name: [f for f in ledger(db, ids[name]) if late_when_written(f)] for name in ids}
    # skip: nothing ran; the latest late fire is recorded missed
    [missed] = late["skip"]
    assert missed["outcome"] == "missed" and latest_late(missed, due["skip"])
    # once: one task, for the latest late fire
    [once] = late["once"]
    assert once["outcome"] == "enqueued" and latest_late(once, due["once"])
    # all: every late fire, oldest first
    assert [f["fire_at"] for f in late["all"]] == fire_times(due["all"], late["all"][-1]["fire_at"])
    assert {f["outcome"] for f in late["all"]} == {"enqueued"}
    assert len(late["all"]) >= 9
    # all with max_catchup 3: the three oldest, and the latest recorded missed
    outcomes = [(f["outcome"], f["fire_at"]) for f in late["all3"]]
    oldest = fire_times(due["all3"], due["all3"] + timedelta(seconds=120))
    assert outcomes[:3] == [("enqueued", t) for t in oldest]
    assert outcomes[3:] == [("missed", outcomes[-1][1])] and outcomes[-1][1] - oldest[-1] >= timedelta(
        minutes=6
    )
    # all with overlap: skip: the first catch-up task is pending, so the rest are skipped
    assert [f["outcome"] for f in late["overlap"]][:2] == ["enqueued", "skipped_overlap"]
    assert {f["outcome"] for f in late["overlap"][1:]} == {"skipped_overlap"}
    # and the one server that fired all of it counted it
    assert counter(metrics, "misses", "skip") == 1 and counter(metrics, "misses", "all3") == 1
    assert counter(metrics, "fires", "all") == len(ledger(db, ids["all"]))
    skipped = [f for f in ledger(db, ids["overlap"]) if f["outcome"] == "skipped_overlap"]
    assert counter(metrics, "overlap_skips", "overlap") == len(skipped) >= 8
    # whatever was on time when the server came back was fired as usual, and
    # nothing fires before its time or twice
    assert_invariants(db)
    assert db.scalar("SELECT COUNT(*) FROM sched_tasks") == db.scalar(
        "SELECT COUNT(*) FROM schedule_fires WHERE outcome = 'enqueued'"
    )


def late_when_written(fire: dict) -> bool:
    return (fire["written"] - fire["fire_at"]).total_seconds() > 5


def latest_late(fire: dict, due: datetime) -> bool:
    """The fire is at least eight minutes after the first late one (ten
    minutes passed; the fire the restart lands next to may still be within
    its 5 s grace, then it is on time, not late), and the fire after it was
    not late when this was written."""
    following = fire["fire_at"] + timedelta(seconds=60)
    return (
        fire["fire_at"] - due >= timedelta(minutes=8) and (fire["written"] - following).total_seconds() <= 5
    )


def fire_times(first: datetime, last: datetime) -> list[datetime]:
    """Every minute from first to last, both included."""
    return [
        first + timedelta(seconds=60 * step) for step in range(int((last - first).total_seconds()) // 60 + 1)
    ]

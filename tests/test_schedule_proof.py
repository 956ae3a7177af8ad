"""The proof across servers (issue 10, item 8): three real executors fire an
every-second schedule and an every-minute cron for more than a minute while
servers are SIGKILLed and restarted and one is black-holed from the database
through the fault proxy. Afterwards the ledger and the task table hold
exactly one task per fire time, and no fire is missing: the grace is 60 s and
some server was always healthy, so the policy allows no gap at all."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

from tests.invariants import check_schedules
from tests.support import http, wait_for

RUN_SECONDS = 62  # the every-minute cron fires at least once in any 60 s
HEARTBEAT = {"heartbeat_interval": 0.5, "heartbeat_timeout": 3}


def fires(db, name: str) -> list[dict]:
    return db.query(
        "SELECT f.* FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id WHERE s.name = %s "
        "ORDER BY f.fire_at",
        (name,),
    )


def test_three_servers_one_task_per_fire_through_kills_and_a_partition(db, proxy, executors):
    # (proxy before executors: torn down after them)
    db.add_queue("ticks", "tick_tasks", scan_interval=1)
    # Given three servers; s3 reaches the database through the fault proxy
    servers = {
        "s1": executors.start("s1", executor=HEARTBEAT),
        "s2": executors.start("s2", executor=HEARTBEAT, database={"claim_mode": "conditional_update"}),
        "s3": executors.start("s3", executor=HEARTBEAT, database={"port": proxy.port, "read_timeout": 3}),
    }
    for body in (
        {"name": "tick", "queue_name": "ticks", "task_type": "scheduled", "interval_seconds": 1},
        {"name": "minutely", "queue_name": "ticks", "task_type": "scheduled", "cron": "*/1 * * * *"},
    ):
        status, answer = http("POST", servers["s1"].admin_url + "/admin/schedule/create", body)
        assert status == 201, answer
    started = time.monotonic()

    def at(second: float) -> None:
        time.sleep(max(0.0, started + second - time.monotonic()))

    def restart(name: str, **sections) -> None:
        servers[name].kill()
        time.sleep(2)
        servers[name] = executors.start(name, executor=HEARTBEAT, **sections)

    # When, over a minute, servers are killed, restarted and partitioned
    at(6)
    restart("s1")
    at(14)
    proxy.set_mode("blackhole")  # s3 is cut off: silence, no error
    at(22)
    proxy.set_mode("drop")  # healed: its stale connections are cut, new ones go through
    at(28)
    restart("s2", database={"claim_mode": "conditional_update"})
    at(36)
    proxy.set_mode("blackhole")
    at(41)
    proxy.set_mode("drop")
    at(48)
    restart("s3", database={"port": proxy.port, "read_timeout": 3})
    at(RUN_SECONDS)
    wait_for(lambda: fires(db, "minutely"), 15, message="the cron's first fire")
    db.execute("UPDATE schedules SET status = 0")
    wait_for(
        lambda: db.scalar("SELECT COUNT(*) FROM tick_tasks WHERE status <> 2") == 0,
        30,
        message="every task done",
    )
    for server in servers.values():
        server.terminate()
        assert server.wait(30) == 0

    # Then the ledger and the task table agree: one task per fire time
    for result in check_schedules(db.connect()):
        assert result.ok, f"{result.name}: {result.violations[:5]}"
    tick, minutely = fires(db, "tick"), fires(db, "minutely")
    assert {fire["outcome"] for fire in tick + minutely} == {"enqueued"}
    assert db.scalar("SELECT COUNT(*) FROM tick_tasks") == len(tick) + len(minutely)
    marks = db.query("SELECT task_params FROM tick_tasks")
    assert len({row["task_params"] for row in marks}) == len(marks)
    # and no fire is missing: every second from the first fire to the last
    times = [fire["fire_at"] for fire in tick]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(times))
    assert len(times) >= RUN_SECONDS - 2
    minutes = [fire["fire_at"] for fire in minutely]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes))
    # every task ran, and saw its own fire in ctx.schedule (the handler checks it)
    assert db.scalar("SELECT COUNT(DISTINCT task_id) FROM executions WHERE table_name = 'tick_tasks'") == len(
        times
    ) + len(minutes)

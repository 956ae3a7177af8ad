"""A real database crash: two executors on a private mariadbd, which is
killed with SIGKILL mid-run and restarted on the same datadir (InnoDB's crash
recovery, not a clean shutdown). The runs are recorded on the machine's own
MariaDB, so the ground truth survives the crash."""

from __future__ import annotations

import json
import random
import time

import pytest

from geventq import Status
from tests.invariants import log_fault, prepare
from tests.ownmariadb import OwnMariaDB
from tests.support import (
    ExecutorProcess,
    TestDatabase,
    assert_all_done_exactly_once,
    servers_that_ran_after,
    wait_for,
    write_config,
)

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
TABLE = "crash_tasks"
TASKS = 3000


@pytest.fixture
def own_mariadb(mariadb, tmp_path):
    server = OwnMariaDB(tmp_path / "mariadb").install().start()
    yield server
    server.remove()


def insert_mixed_tasks(db: TestDatabase, count: int) -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(count):
        roll = rng.random()
        params = (
            {"kind": "fast"}
            if roll < 0.8
            else {"kind": "slow", "seconds": round(rng.uniform(0.2, 1.0), 2)}
            if roll < 0.95
            else {"kind": "flaky", "succeed_on": 2}
        )
        rows.append(("chaos", json.dumps(params), 5))
    with db.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {TABLE} (task_type, task_params, max_retries) VALUES (%s, %s, %s)", rows
        )


def test_two_executors_survive_a_killed_and_restarted_database(db, own_mariadb, tmp_path):
    # Given the task tables on a private mariadbd, the runs recorded on the
    # machine's MariaDB in a database of the same name (the `db` fixture)
    tasks_db = TestDatabase(db.name, port=own_mariadb.port).create()
    with db.connect() as conn, conn.cursor() as cur:
        prepare(cur)
    tasks_db.execute("DELETE FROM queue_configs")
    tasks_db.add_queue("crash", TABLE, max_workers=30, scan_interval=1, task_timeout=10)
    # and two executors on it
    executors = [
        ExecutorProcess(write_config(tmp_path / server_id, tasks_db), tasks_db, server_id)
        for server_id in ("c1", "c2")
    ]
    try:
        for executor in executors:
            executor.start()
        insert_mixed_tasks(tasks_db, TASKS)
        wait_for(
            lambda: db.scalar("SELECT COUNT(*) FROM executions") >= TASKS // 4,
            timeout=60,
            message="a quarter of the tasks run",
        )
        # When mariadbd is killed mid-run, stays down for 3 s, and comes back on the same datadir
        pid = own_mariadb.process.pid
        own_mariadb.kill()
        with db.connect() as conn, conn.cursor() as cur:
            log_fault(cur, "dbcrash", detail=f"mariadbd pid {pid}")
        wait_for(
            lambda: all("unreachable" in e.output or "unavailable" in e.output for e in executors),
            timeout=30,
            message="both executors see the database gone",
        )
        # (down for longer than the 1.5 s lease: every handler is stopped, every lease renewed after)
        time.sleep(3)
        own_mariadb.start()
        # Then both executors carry on, and every task ends terminal
        unfinished = f"SELECT COUNT(*) FROM {TABLE} WHERE status IN ({PENDING:d}, {RUNNING:d})"
        wait_for(
            lambda: not tasks_db.scalar(unfinished), timeout=120, interval=0.5, message="every task terminal"
        )
        assert all(executor.process.poll() is None for executor in executors), "an executor died"
        assert all("heartbeat lease renewed" in executor.output for executor in executors)
        assert servers_that_ran_after(db, "dbcrash") == 2, "both executors ran tasks after the restart"
        # and nothing was lost or run twice at once
        assert_all_done_exactly_once(tasks_db, db, TABLE, TASKS)
    finally:
        for executor in executors:
            executor.stop()
        tasks_db.drop()

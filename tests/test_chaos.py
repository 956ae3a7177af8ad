"""The chaos soak's 1-minute profile, exactly as the README gives it, and the
invariant checker shown to catch what it is meant to catch."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest

from geventq import Status
from tests.chaos import MUST_FAULTS
from tests.invariants import check, log_fault, prepare
from tests.support import REPO

T0 = datetime(2030, 1, 1, 12, 0, 0)
PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def test_chaos_soak_one_minute_profile(mariadb):
    seed = os.environ.get("CHAOS_SEED", "1")
    # The soak runs 60 s of faults, then drains; it exits non-zero on any broken invariant.
    result = subprocess.run(
        [sys.executable, "-m", "tests.chaos", "--minutes", "1", "--seed", seed],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = result.stdout[result.stdout.find("chaos soak:") :]
    print(result.stdout[-20000:])
    assert result.returncode == 0, f"{report[-15000:]}\n{result.stderr[-3000:]}"
    assert "RESULT: PASS" in report
    faults = next(line for line in report.splitlines() if line.startswith("faults:"))
    # every run applies each of these classes at least once (tests.chaos.MUST_FAULTS)
    assert all(f"{kind} " in faults for kind in MUST_FAULTS), faults


# --- the checker, on hand-made rows ----------------------------------------------


@pytest.fixture
def tables(db):
    with db.connect() as conn, conn.cursor() as cur:
        prepare(cur)
    db.execute("CREATE TABLE t LIKE email_tasks")
    return db


def task(db, status, retry_count, max_retries=3, kind="fast", error_msg=None, **params) -> int:
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO t (task_type, task_params, status, retry_count, max_retries, error_msg) "
            "VALUES ('chaos', %s, %s, %s, %s, %s)",
            (json.dumps({"kind": kind, **params}), int(status), retry_count, max_retries, error_msg),
        )
        return cur.lastrowid


def run(db, task_id, retry_count, start, end, ended="ok", pid=100, server="s1"):
    finished = None if end is None else T0 + timedelta(seconds=end)
    db.execute(
        "INSERT INTO executions (table_name, task_id, retry_count, server_id, pid, claimed_at, started_at, "
        "finished_at, ended) VALUES ('t', %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            task_id,
            retry_count,
            server,
            pid,
            T0 + timedelta(seconds=start),
            T0 + timedelta(seconds=start),
            finished,
            ended if end is not None else None,
        ),
    )


def broken(db) -> dict[str, int]:
    with db.connect() as conn:
        report = check(conn, ["t"])
    return {result.name: len(result.violations) for result in report.results if not result.ok}


def test_checker_passes_a_clean_history(tables):
    db = tables
    ok = task(db, DONE, 0)
    run(db, ok, 0, 0, 1)
    flaky = task(db, DONE, 2, kind="flaky", succeed_on=3)
    run(db, flaky, 0, 0, 1, "error")
    run(db, flaky, 1, 2, 3, "error")
    run(db, flaky, 2, 4, 5)
    failing = task(db, FAILED, 3, kind="fail", error_msg="RuntimeError: no")
    for attempt in range(4):
        run(db, failing, attempt, attempt * 2, attempt * 2 + 1, "error")
    # a run killed with its process, rescued by another server after the kill
    rescued = task(db, DONE, 1)
    run(db, rescued, 0, 0, None, pid=7)
    run(db, rescued, 1, 5, 6, server="s2")
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("SET TIMESTAMP = UNIX_TIMESTAMP(%s)", (T0 + timedelta(seconds=2),))
        log_fault(cur, "sigkill", "s1", 7)
    assert broken(db) == {}


def test_checker_catches_two_runs_at_once(tables):
    db = tables
    both = task(db, DONE, 1)
    run(db, both, 0, 0, 5, "lease")
    run(db, both, 1, 4, 6, server="s2")
    # a run that never finished in a process nobody killed counts as never ended
    never = task(db, DONE, 1)
    run(db, never, 0, 0, None, pid=8)
    run(db, never, 1, 9, 10)
    assert broken(db) == {"no_overlap": 2}


def test_checker_catches_an_attempt_run_twice_and_out_of_order(tables):
    db = tables
    twice = task(db, DONE, 1)
    run(db, twice, 1, 0, 1)
    run(db, twice, 1, 2, 3)
    stale = task(db, DONE, 1)
    run(db, stale, 1, 0, 1)
    run(db, stale, 0, 2, 3, "lease")
    # handed back by a shutdown, the same attempt may run again
    released = task(db, DONE, 0)
    run(db, released, 0, 0, 1, "shutdown")
    run(db, released, 0, 2, 3)
    assert broken(db) == {"attempt_once": 1, "in_order": 1}


def test_checker_catches_wrong_retry_counts_and_outcomes(tables):
    db = tables
    run(db, task(db, DONE, 1), 0, 0, 1)  # done, but no ok run at retry_count 1
    run(db, task(db, FAILED, 1, kind="fail", error_msg="RuntimeError"), 1, 0, 1, "error")  # failed early
    run(db, task(db, DONE, 0, kind="fail"), 0, 0, 1)  # a fail task that succeeded
    flaky = task(db, DONE, 0, kind="flaky", succeed_on=2)  # succeeded one attempt too soon
    run(db, flaky, 0, 0, 1)
    task(db, FAILED, 4, error_msg="RuntimeError")  # one past max_retries, no lost attempt named
    task(db, RUNNING, 0)  # left running
    assert broken(db) == {"retry_count": 5, "terminal": 1, "none_running": 1}


def fire(db, schedule_id, fire_at, written, outcome="enqueued", name="every_minute", mark=None) -> None:
    """A ledger row written `written` seconds after its fire time, and its task."""
    task_id = None
    if outcome == "enqueued":
        params = {"kind": "fast", "_schedule": mark or {"name": name, "fire_at": f"{fire_at}.000"}}
        with db.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO st (task_type, task_params, status) VALUES ('chaos', %s, 2)",
                (json.dumps(params),),
            )
            task_id = cur.lastrowid
    db.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, task_table, task_id, outcome, created_at) "
        "VALUES (%s, %s, 'st', %s, %s, %s + INTERVAL TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) SECOND "
        "+ INTERVAL %s SECOND)",
        (schedule_id, fire_at, task_id, outcome, fire_at, written),
    )


def test_checker_catches_a_second_task_for_a_fire_and_a_gap(tables):
    db = tables
    db.execute("CREATE TABLE st LIKE email_tasks")  # the schedule's tasks (no runs: not checked as tasks)
    db.execute(
        "INSERT INTO schedules (name, queue_name, task_type, cron, misfire_grace_seconds) "
        "VALUES ('every_minute', 'q', 'chaos', '* * * * *', 300)"
    )
    sid = db.scalar("SELECT id FROM schedules WHERE name = 'every_minute'")
    # on time at 10:00 and 10:01; 10:02 missing although 10:03 was written 5 s after its time
    fire(db, sid, "2030-01-01 10:00:00", 0.1)
    fire(db, sid, "2030-01-01 10:01:00", 0.1)
    fire(db, sid, "2030-01-01 10:03:00", 5)
    # a late run settled by a policy is no gap: 10:04 to 10:08 were late when 10:09 was written
    fire(db, sid, "2030-01-01 10:09:00", 400)
    # a task carrying 10:00 again, which no ledger row names
    with db.connect() as conn, conn.cursor() as cur:
        mark = {"name": "every_minute", "fire_at": "2030-01-01 10:00:00.000"}
        cur.execute(
            "INSERT INTO st (task_type, task_params, status) VALUES ('chaos', %s, 2)",
            (json.dumps({"kind": "fast", "_schedule": mark}),),
        )
    # a fire written before its time
    fire(db, sid, "2030-01-01 10:10:00", -2)
    assert broken(db) == {"one_task_per_fire": 2, "no_fire_gap": 2}


def test_checker_catches_two_tasks_with_one_dedupe_key_running_at_once(tables):
    db = tables
    db.execute("ALTER TABLE t ADD COLUMN dedupe_key VARCHAR(191) NULL")
    first, second, later = task(db, DONE, 0), task(db, DONE, 0), task(db, DONE, 0)
    db.execute("UPDATE t SET dedupe_key = 'k' WHERE id IN (%s, %s, %s)", (first, second, later))
    run(db, first, 0, 0, 5)
    run(db, second, 0, 3, 4)  # started while the first still ran: a broken dedupe
    run(db, later, 0, 6, 7)  # after both ended: fine
    assert broken(db) == {"dedupe_once": 1}


def test_checker_catches_broken_limits_and_a_cancelled_task_that_ran_on(tables):
    # Given queue t with at most 2 running, 1 per key, 3 claims in any 10 s
    db = tables
    db.execute("ALTER TABLE t ADD COLUMN concurrency_key VARCHAR(191) NULL")
    db.execute(
        "INSERT INTO queue_configs (queue_name, table_name, max_workers, global_max_workers, "
        "key_max_workers, rate_limit, rate_period) VALUES ('t', 't', 10, 2, 1, 3, 10)"
    )
    ids = [task(db, DONE, 0) for _ in range(4)]
    db.execute("UPDATE t SET concurrency_key = IF(id = %s, 'b', 'a')", (ids[3],))
    # three at once (cap 2), two of key a at once (cap 1), four claims within 10 s (rate 3)
    run(db, ids[0], 0, 0, 5)
    run(db, ids[1], 0, 1, 5)
    run(db, ids[3], 0, 2, 5)
    run(db, ids[2], 0, 8, 9)  # alone: fine by the caps, the fourth claim in 10 s
    # a run stopped by a cancel, whose task ran again and ended done
    cancelled = task(db, DONE, 1)
    run(db, cancelled, 0, 20, 21, "cancelled")
    run(db, cancelled, 1, 22, 23)
    assert broken(db) == {"global_cap": 1, "key_cap": 1, "rate_limit": 1, "cancel_final": 2}


def test_checker_passes_limits_kept_and_a_cancel_that_stuck(tables):
    db = tables
    db.execute(
        "INSERT INTO queue_configs (queue_name, table_name, max_workers, global_max_workers, "
        "rate_limit, rate_period) VALUES ('t', 't', 10, 2, 3, 10)"
    )
    first, second, third = (task(db, DONE, 0) for _ in range(3))
    run(db, first, 0, 0, 5)
    run(db, second, 0, 1, 5)
    run(db, third, 0, 5, 6)  # starts as the others end: two at most, three claims in 10 s
    stopped = task(db, CANCELLED, 0)
    run(db, stopped, 0, 11, 12, "cancelled")
    assert broken(db) == {}


def test_checker_accepts_a_timeout_only_after_the_task_timeout(tables):
    # Given queue t with a 5 s task_timeout and slow (1 s) tasks that timed out
    db = tables
    db.execute(
        "INSERT INTO queue_configs (queue_name, table_name, max_workers, task_timeout) "
        "VALUES ('t', 't', 10, 5)"
    )
    overran = task(db, DONE, 1, kind="slow", seconds=1)
    run(db, overran, 0, 0, 5.2, "timeout")  # a loaded machine: 5.2 s from its claim
    run(db, overran, 1, 6, 7)
    early = task(db, DONE, 1, kind="slow", seconds=1)
    run(db, early, 0, 0, 2, "timeout")  # timed out after 2 s: the product is wrong
    run(db, early, 1, 3, 4)
    assert broken(db) == {"retry_count": 1}


def test_checker_catches_outcome_counters_that_do_not_add_up(tables):
    db = tables
    done, failed = task(db, DONE, 0), task(db, FAILED, 3, kind="fail", error_msg="RuntimeError: no")
    run(db, done, 0, 0, 1)
    for attempt in range(4):
        run(db, failed, attempt, attempt * 2, attempt * 2 + 1, "error")
    db.execute(
        "INSERT INTO queue_minute_counts (table_name, minute, writer, done, failed) "
        "VALUES ('t', '2030-01-01 12:00', 's1', 1, 1)"
    )
    with db.connect() as conn:
        assert check(conn, ["t"], counters=True).ok
    db.execute("UPDATE queue_minute_counts SET done = 2")  # a success counted twice
    with db.connect() as conn:
        report = check(conn, ["t"], counters=True)
    assert {r.name: len(r.violations) for r in report.results if not r.ok} == {"outcome_counts": 1}

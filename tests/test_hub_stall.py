"""A handler that blocks the hub: the server stays alive (its heartbeat runs
in a native thread), nobody rescues its task, and the monitor thread names
the task that blocked. CPU-bound work belongs in ctx.run_in_thread."""

import time

from geventq import Status
from tests.invariants import check
from tests.support import wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def heartbeat_age(db, server_id: str) -> float:
    return float(
        db.scalar(
            "SELECT TIMESTAMPDIFF(MICROSECOND, last_heartbeat, NOW(6)) / 1e6 "
            "FROM servers WHERE server_id = %s",
            (server_id,),
        )
    )


def test_a_handler_blocking_the_hub_longer_than_the_heartbeat_timeout_is_not_a_death(chaos_db, executors):
    db = chaos_db
    # Given s1 running a queue pinned to it, and s2 watching for dead servers
    db.add_queue("q", "q_tasks", server_id="s1")
    s1 = executors.start("s1", executor={"heartbeat_timeout": 3, "block_threshold": 1.0})
    s2 = executors.start("s2", executor={"heartbeat_timeout": 3})
    # When a handler spins the CPU for 6 s without yielding (twice the heartbeat timeout)
    [task_id] = db.insert_tasks("q_tasks", "chaos", params={"kind": "cpu", "seconds": 6}, max_retries=3)
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions"), timeout=10, message="the cpu task started")
    # Then s1's heartbeat keeps reaching the database all along
    ages = []
    while db.task("q_tasks", task_id)["status"] == RUNNING:
        ages.append(heartbeat_age(db, "s1"))
        time.sleep(0.25)
    assert len(ages) >= 10, ages
    assert max(ages) < 1.5, ages
    # and the task ran once, to its end, and was never rescued
    task = db.task("q_tasks", task_id)
    assert (task["status"], task["retry_count"], task["server_id"]) == (DONE, 0, "s1")
    [run] = db.query("SELECT * FROM executions")
    assert run["ended"] == "ok" and (run["finished_at"] - run["started_at"]).total_seconds() >= 6
    assert "rescued" not in s2.output
    # and the monitor thread named the task that blocked, once
    wait_for(lambda: "blocked the event loop" in s1.output, timeout=5, message="the blocking report")
    reports = [line for line in s1.output.splitlines() if "blocked the event loop" in line]
    assert len(reports) == 1, reports
    assert f"task q_tasks-{task_id} blocked the event loop for at least" in reports[0]
    assert "chaos.py" in reports[0] and "_behave" in reports[0]
    assert check(db.connect(), ["q_tasks"]).ok


def test_cpu_work_in_run_in_thread_leaves_the_hub_free(chaos_db, executors):
    db = chaos_db
    db.add_queue("q", "q_tasks", max_workers=10)
    s1 = executors.start("s1", executor={"block_threshold": 0.5})
    # Given a handler spinning the CPU for 10 s in gevent's threadpool (long
    # enough that a loaded machine's scheduling cannot decide the outcome:
    # only a blocked hub could keep 20 quick tasks from ending meanwhile)
    [slow] = db.insert_tasks("q_tasks", "chaos", params={"kind": "cpu_thread", "seconds": 10})
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions"), timeout=10)
    # When quick tasks arrive meanwhile
    quick = db.insert_tasks("q_tasks", "chaos", 20, params={"kind": "fast"})
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 21}, timeout=30)
    # Then they all finished while the CPU work was still running
    runs = {run["task_id"]: run for run in db.query("SELECT * FROM executions")}
    assert all(runs[task_id]["finished_at"] < runs[slow]["finished_at"] for task_id in quick)
    assert (runs[slow]["finished_at"] - runs[slow]["started_at"]).total_seconds() >= 10
    # and nothing was reported as blocking
    assert "blocked the event loop" not in s1.output

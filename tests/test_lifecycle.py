"""The task life cycle through a real executor process: success, retries
with backoff, final failure, permanent failure, timeout, bad params."""

import itertools

from geventq import Status
from tests.support import wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def test_tasks_run_once_and_are_marked_done(db, executors):
    # Given a queue with due tasks
    db.add_queue("q", "q_tasks")
    ids = db.insert_tasks("q_tasks", "record", 20)
    # When an executor runs
    executors.start()
    # Then each task is done exactly once, with end_time set and error cleared
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 20}, message="all done")
    runs = db.query("SELECT task_id, COUNT(*) AS n FROM executions GROUP BY task_id")
    assert sorted(row["task_id"] for row in runs) == ids
    assert all(row["n"] == 1 for row in runs)
    assert db.scalar("SELECT COUNT(*) FROM q_tasks WHERE end_time IS NULL OR error_msg IS NOT NULL") == 0


def test_retry_then_success(db, executors):
    db.add_queue("q", "q_tasks")
    [task_id] = db.insert_tasks("q_tasks", "flaky", params={"succeed_on": 3}, max_retries=3)
    executors.start()
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, message="done after retries")
    task = db.task("q_tasks", task_id)
    assert task["retry_count"] == 2
    assert db.scalar("SELECT COUNT(*) FROM executions WHERE task_id = %s", (task_id,)) == 3


def test_a_retry_runs_when_due_even_with_a_long_scan_interval(db, executors):
    # Given a queue scanned only every 30 s
    db.add_queue("q", "q_tasks", scan_interval=30)
    [task_id] = db.insert_tasks("q_tasks", "flaky", params={"succeed_on": 2}, max_retries=3)
    executors.start()
    # Then the retry (backoff 0.2 s) runs as soon as it is due, not 30 s later
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=5, message="retried")
    assert db.task("q_tasks", task_id)["retry_count"] == 1


def test_a_scheduled_task_starts_on_time_with_a_long_scan_interval(db, executors):
    # Given a task due in 4 s on a queue scanned every 30 s
    db.add_queue("q", "q_tasks", scan_interval=30)
    [task_id] = db.insert_tasks("q_tasks", "record", delay_seconds=4)
    # When the first scan finds nothing due yet
    executors.start()
    # Then the scanner sleeps until the task is due, not for the whole interval
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=10, message="ran on time")
    late = db.scalar("SELECT TIMESTAMPDIFF(MICROSECOND, schedule_time, start_time) / 1e6 FROM q_tasks")
    assert late < 1.0


def test_retries_are_pushed_back_by_the_backoff(db, executors):
    db.add_queue("q", "q_tasks")
    [task_id] = db.insert_tasks("q_tasks", "flaky", params={"succeed_on": 3}, max_retries=3)
    executors.start(queue={"retry_backoff_base": 1, "retry_backoff_max": 10})
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, message="done after retries")
    starts = [
        row["started_at"]
        for row in db.query("SELECT started_at FROM executions WHERE task_id = %s ORDER BY id", (task_id,))
    ]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    # base * 2^retry_count: 1 s before the 2nd attempt, 2 s before the 3rd
    assert 1.0 <= gaps[0] < 3.0
    assert 2.0 <= gaps[1] < 4.0


def test_retries_exhausted_fail_the_task(db, executors):
    db.add_queue("q", "q_tasks")
    [task_id] = db.insert_tasks("q_tasks", "fail", params={"message": "nope"}, max_retries=2)
    executors.start()
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == FAILED, message="failed")
    task = db.task("q_tasks", task_id)
    assert task["retry_count"] == 2
    assert "RuntimeError: nope" in task["error_msg"]
    assert task["end_time"] is not None
    assert db.scalar("SELECT COUNT(*) FROM executions WHERE task_id = %s", (task_id,)) == 3


def test_permanent_failure_and_bad_params_skip_retries(db, executors):
    db.add_queue("q", "q_tasks")
    [permanent] = db.insert_tasks("q_tasks", "permanent", max_retries=5)
    [bad_json] = db.insert_tasks("q_tasks", "noop", max_retries=5)
    db.execute("UPDATE q_tasks SET task_params = '{not json' WHERE id = %s", (bad_json,))
    executors.start()
    wait_for(lambda: db.status_counts("q_tasks") == {FAILED: 2}, message="both failed")
    assert db.task("q_tasks", permanent)["retry_count"] == 0
    assert "task_params is not valid JSON" in db.task("q_tasks", bad_json)["error_msg"]


def test_task_timeout_is_recorded_as_a_failure(db, executors):
    db.add_queue("q", "q_tasks", task_timeout=1)
    [task_id] = db.insert_tasks("q_tasks", "hang", params={"seconds": 30}, max_retries=0)
    process = executors.start()
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == FAILED, timeout=10, message="timed out")
    assert "timed out after 1s" in db.task("q_tasks", task_id)["error_msg"]
    assert process.process.poll() is None


def test_future_tasks_wait_for_their_schedule_time(db, executors):
    db.add_queue("q", "q_tasks")
    executors.start()
    [later] = db.insert_tasks("q_tasks", "record", delay_seconds=2)
    [now] = db.insert_tasks("q_tasks", "record")
    wait_for(lambda: db.task("q_tasks", now)["status"] == DONE, message="due task done")
    wait_for(lambda: db.task("q_tasks", later)["status"] == DONE, message="later task done")
    # The later task ran, but never before its schedule_time (database clock)
    started = db.scalar("SELECT started_at FROM executions WHERE task_id = %s", (later,))
    assert started >= db.task("q_tasks", later)["schedule_time"]
    assert db.task("q_tasks", later)["start_time"] >= db.task("q_tasks", later)["schedule_time"]
    assert db.task("q_tasks", now)["start_time"] < db.task("q_tasks", later)["schedule_time"]


def test_job_log_holds_start_handler_lines_and_outcome(db, executors, tmp_path):
    db.add_queue("q", "q_tasks")
    [task_id] = db.insert_tasks("q_tasks", "record")
    executors.start()
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE)
    # Job logs are written by a background thread: allow it a moment.
    [log_file] = wait_for(lambda: list((tmp_path / "logs").glob(f"job-q_tasks-{task_id}-*.log")))
    text = wait_for(lambda: "done in" in log_file.read_text() and log_file.read_text())
    assert "start record attempt 1/4" in text
    assert "recorded run" in text
    assert "done in" in text
    assert list((tmp_path / "logs").glob("executor-*.log"))

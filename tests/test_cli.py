"""The operator commands of `geventq` (as `python -m geventq`), as
subprocesses against a test database with no executor running: tables by
default, --json for scripts, the documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geventq import Status
from tests.support import REPO, free_port, write_config

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def geventq(config, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geventq", *args, "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def ok_json(config, *args: str):
    result = geventq(config, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def config(db, tmp_path):
    db.add_queue("q", "q_tasks", status=0)  # nobody runs it
    return write_config(tmp_path, db)


def test_enqueue_list_get_cancel_retry(config, db):
    # When tasks are enqueued from the command line (params as an argument and from stdin)
    first = geventq(config, "tasks", "enqueue", "q", "record", '{"to": "a@example.com"}')
    assert first.returncode == 0 and first.stdout == "enqueued task 1 in q\n"
    second = ok_json(config, "tasks", "enqueue", "q", "record", "--delay", "3600", "--max-retries", "0")
    assert second == {"id": 2, "duplicate": False}
    piped = geventq(config, "tasks", "enqueue", "q", "record", "-", stdin='["from", "stdin"]')
    assert piped.returncode == 0
    assert db.task("q_tasks", 3)["task_params"] == '["from", "stdin"]'
    assert db.task("q_tasks", 2)["max_retries"] == 0

    # Then list shows them newest first, as a table and as JSON
    table = geventq(config, "tasks", "list", "q")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "STATUS", "DUE", "ATTEMPT", "SERVER", "ERROR", "PARAMS"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]
    page = ok_json(config, "tasks", "list", "q", "--limit", "2")
    assert [item["id"] for item in page["items"]] == [3, 2] and page["next_offset"] == -2
    # (the cursor: tasks older than id 2) and passed back, the next page is the rest
    rest = ok_json(config, "tasks", "list", "q", "--limit", "2", "--offset", "-2")
    assert [item["id"] for item in rest["items"]] == [1] and rest["next_offset"] is None
    assert ok_json(config, "tasks", "get", "q", "1")["task_params"] == {"to": "a@example.com"}

    # When one is cancelled, a missing and a cancelled one are refused with their codes
    cancel = geventq(config, "tasks", "cancel", "q", "1", "99")
    assert (
        cancel.returncode == 3
        and "task 1: cancelled" in cancel.stdout
        and "no task with id 99" in cancel.stderr
    )
    again = geventq(config, "tasks", "cancel", "q", "1")
    assert again.returncode == 4 and "is cancelled; there is nothing to cancel" in again.stderr
    # and retried by id
    retry = geventq(config, "tasks", "retry", "q", "1")
    assert retry.returncode == 0 and db.task("q_tasks", 1)["status"] == PENDING
    assert geventq(config, "tasks", "retry", "q", "1").returncode == 4


def test_bulk_retry_shows_progress_and_retries_only_what_is_asked(config, db):
    # Given 2,500 failed tasks of one type, 10 of another and 5 cancelled ones
    db.execute("INSERT INTO q_tasks (task_type, status, retry_count) SELECT 'a', 3, 3 FROM seq_1_to_2500")
    db.execute("INSERT INTO q_tasks (task_type, status) SELECT 'b', 3 FROM seq_1_to_10")
    db.execute("INSERT INTO q_tasks (task_type, status) SELECT 'a', 4 FROM seq_1_to_5")
    # When every failed task of type a is retried, the way the issue spells it
    result = geventq(config, "tasks", "retry", "--status", "failed", "--queue", "q", "--type", "a")
    # Then progress went to stderr, the summary to stdout, and only those changed
    assert result.returncode == 0, result.stderr
    assert "2,500/2,500 100%" in result.stderr
    assert result.stdout == "2,500 failed tasks of q are pending again\n"
    assert db.status_counts("q_tasks") == {PENDING: 2500, FAILED: 10, CANCELLED: 5}
    assert db.scalar("SELECT MAX(retry_count) FROM q_tasks WHERE status = 0") == 0
    assert ok_json(config, "tasks", "retry", "q", "--status", "cancelled") == {"retried": 5, "skipped": 0}
    nothing = geventq(config, "tasks", "retry", "q", "--status", "cancelled")
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("tasks", "enqueue", "nope", "record"), 2, "queue: no queue named 'nope'"),
        (("tasks", "enqueue", "q", "record", "[1"), 2, "params: is not valid JSON text"),
        (
            ("tasks", "enqueue", "q", "record", "--priority", "1"),
            2,
            "priority: table q_tasks of queue q has no",
        ),
        (("tasks", "enqueue", "q", "record", "--at", "tomorrow"), 2, "--at: 'tomorrow' is not"),
        (("tasks", "list", "q", "--limit", "0"), 2, "limit: must be an integer from 1 to 1,000"),
        (("tasks", "retry", "q"), 2, "ID: give task ids, or --status"),
        (("tasks", "frobnicate", "q"), 2, "invalid choice: 'frobnicate'"),
        (("tasks", "get", "q", "7"), 3, "id: queue q has no task with id 7"),
    ],
)
def test_exit_codes_name_the_problem(config, args, code, message):
    result = geventq(config, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stderr


def test_unreachable_database_exits_1_naming_it(db, tmp_path):
    port = free_port()
    config = write_config(tmp_path, db, database={"port": port, "connect_timeout": 2})
    result = geventq(config, "tasks", "list", "email_queue")
    assert result.returncode == 1 and f"127.0.0.1:{port}" in result.stderr


def test_queues_status_and_schedules(config, db):
    # queues: a table (and JSON) of queue_configs with counts
    queues = geventq(config, "queues")
    assert queues.returncode == 0 and queues.stdout.splitlines()[0].split()[:2] == ["QUEUE", "TABLE"]
    assert {row["queue_name"] for row in ok_json(config, "queues")} >= {"q", "email_queue"}
    # status --json carries the same queues and the servers
    assert {"queues", "servers", "now"} <= set(ok_json(config, "status"))
    # options may come before the command, as `python -m geventq --config X` always allowed
    before = subprocess.run(
        [sys.executable, "-m", "geventq", "--config", str(config), "queues", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert before.returncode == 0 and json.loads(before.stdout)
    # schedules: the rows of the schedules table, one added by plain SQL among them
    db.execute(
        "INSERT INTO schedules (name, queue_name, task_type, cron, timezone, status) "
        "VALUES ('nightly', 'q', 'report', '0 3 * * *', 'Europe/Paris', 1)"
    )
    listed = geventq(config, "schedules")
    assert listed.returncode == 0 and "nightly" in listed.stdout and "0 3 * * *" in listed.stdout
    # ... and a clear message, exit 1, on a database no executor has set up yet
    db.execute("DROP TABLE schedule_fires, schedules")
    missing = geventq(config, "schedules")
    assert missing.returncode == 1 and "no schedules table" in missing.stderr

"""The optional task-table columns: `priority` (the claim takes smaller
first, walking an index) and `dedupe_key` (one pending or running task per
key, enforced by a UNIQUE index on a generated column), through the admin
API, geventq.Client and a real executor."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from geventq import Client, Status, store
from geventq.db import quote_table
from geventq.errors import TaskStateError
from tests.support import RecordingCursor, http, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def create_queue(url: str, **body: Any) -> dict:
    status, answer = http("POST", f"{url}/admin/queue/create", {"max_workers": 1, "scan_interval": 1, **body})
    assert status == 201, answer
    return answer["data"]


def explain_claim(db, table: str, order: str) -> dict:
    """EXPLAIN the claim's SELECT exactly as store builds it (a recording cursor)."""

    cursor = RecordingCursor()
    store.claim_due_tasks_skip_locked(
        cursor, quote_table(table, None), "s", ("record",), 50, queue_name="prio", order=order
    )
    sql, args = cursor.statements[0]
    return db.query("EXPLAIN " + sql, args)[0]


def test_priority_orders_the_claim_through_its_index(executors, db):
    # Given a queue created with the optional columns, one worker, disabled
    server = executors.start("server-001")
    created = create_queue(
        server.admin_url,
        queue_name="prio",
        table_name="prio_tasks",
        status=0,
        columns=["priority", "dedupe_key"],
    )
    features = db_features(db, "prio_tasks")
    assert features.priority and features.priority_index == "idx_status_priority_schedule"
    assert features.dedupe and features.dedupe_index == "uk_dedupe_active"

    # and 20,000 finished rows besides the pending ones, so the plan is a real choice
    db.execute(
        "INSERT INTO prio_tasks (task_type, status, priority, schedule_time) "
        "SELECT 'record', 2, seq % 7, NOW(3) - INTERVAL seq SECOND FROM seq_1_to_20000"
    )
    db.execute("ANALYZE TABLE prio_tasks")
    with Client(executors.config()) as client:
        priorities = [5, 1, 3, 1, 0, -2, 3, 9, 0, 1]
        ids = client.enqueue_many("prio", [{"task_type": "record", "priority": p} for p in priorities])

    # Then the claim walks (status, priority, schedule_time): no sort
    plan = explain_claim(db, "prio_tasks", store.claim_order(features))
    assert plan["key"] == "idx_status_priority_schedule", plan
    assert "filesort" not in (plan["Extra"] or "").lower(), plan

    # When the queue is enabled
    status, _ = http("PUT", f"{server.admin_url}/admin/queue/update?id={created['id']}", {"status": 1})
    assert status == 200
    wait_for(lambda: db.status_counts("prio_tasks").get(DONE) == 20_000 + 10, message="all ten done")

    # Then they ran smaller priority first, oldest first within a priority
    runs = db.query("SELECT task_id FROM executions WHERE table_name = 'prio_tasks' ORDER BY started_at, id")
    expected = [task_id for _, task_id in sorted(zip(priorities, ids, strict=True))]
    assert [run["task_id"] for run in runs] == expected
    assert "queue prio: claims by priority" in server.output


def test_a_table_without_priority_claims_exactly_as_before(db):
    features = db_features(db, "email_tasks")
    assert features == store.NO_FEATURES
    plan = explain_claim(db, "email_tasks", store.claim_order(features))
    assert store.claim_order(features) == "schedule_time, id"
    assert plan["key"] == "idx_status_schedule" and "filesort" not in (plan["Extra"] or "").lower()


def test_dedupe_key_is_enforced_by_the_database(executors, db):
    # Given a queue with dedupe_key that nobody runs
    server = executors.start("server-001", queue={"enable": False})
    create_queue(server.admin_url, queue_name="once", table_name="once_tasks", columns=["dedupe_key"])
    start = threading.Barrier(8)
    answers: list = []

    with Client(executors.config()) as client:

        def enqueue() -> None:
            start.wait()
            answers.append(client.enqueue("once", "record", {"n": 1}, dedupe_key="invoice-42"))

        # When 8 threads enqueue the same key at once
        threads = [threading.Thread(target=enqueue) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

        # Then one task exists, and every caller got its id; seven were told it was a duplicate
        assert db.scalar("SELECT COUNT(*) FROM once_tasks") == 1
        assert len(set(answers)) == 1 and sorted(a.duplicate for a in answers) == [False] + [True] * 7
        first = answers[0]

        # and a batch reuses it too, and dedupes within itself
        batch = client.enqueue_many(
            "once",
            [
                {"task_type": "record", "dedupe_key": "invoice-42"},
                {"task_type": "record"},
                {"task_type": "record", "dedupe_key": "invoice-43"},
                {"task_type": "record", "dedupe_key": "invoice-43"},
            ],
        )
        assert batch[0] == first and batch[0].duplicate
        assert not batch[1].duplicate and not batch[2].duplicate
        assert batch[3] == batch[2] and batch[3].duplicate
        assert db.scalar("SELECT COUNT(*) FROM once_tasks") == 3

        # When the holder finishes (here: fails), the key is free again
        db.execute("UPDATE once_tasks SET status = 3, end_time = NOW(3) WHERE id = %s", (first,))
        again = client.enqueue("once", "record", dedupe_key="invoice-42")
        assert again != first and not again.duplicate

        # and the failed one cannot be retried while the new one holds the key
        with pytest.raises(
            TaskStateError, match="dedupe_key 'invoice-42', which a pending or running task holds"
        ):
            client.retry("once", first)
        assert db.task("once_tasks", first)["status"] == FAILED

    # The admin API: 201 for a new task, 200 with duplicate for a held key
    url = server.admin_url
    status, answer = http(
        "POST", f"{url}/admin/task/create?table=once_tasks", {"task_type": "r", "dedupe_key": "k"}
    )
    assert status == 201 and "duplicate" not in answer["data"]
    status, again_answer = http(
        "POST", f"{url}/admin/task/create?table=once_tasks", {"task_type": "r", "dedupe_key": "k"}
    )
    assert status == 200 and again_answer["data"] == {"id": answer["data"]["id"], "duplicate": True}
    status, batch_answer = http(
        "POST",
        f"{url}/admin/task/batch_create?table=once_tasks",
        [{"task_type": "r", "dedupe_key": "k"}, {"task_type": "r", "dedupe_key": "k2"}],
    )
    assert status == 201 and batch_answer["data"]["duplicates"] == [0]
    assert batch_answer["data"]["ids"][0] == answer["data"]["id"]
    status, conflict = http("POST", f"{url}/admin/task/retry?table=once_tasks&id={first}")
    assert status == 409 and conflict["message"].startswith("id: ")


def test_optional_fields_on_a_table_without_their_columns_are_refused(executors, db):
    server = executors.start("server-001", queue={"enable": False})
    url = server.admin_url
    for field, value in (("priority", 1), ("dedupe_key", "k")):
        status, answer = http(
            "POST", f"{url}/admin/task/create?table=email_tasks", {"task_type": "r", field: value}
        )
        assert status == 400 and answer["message"].startswith(f"{field}: table email_tasks"), answer
    # queue/create does not rebuild an existing table: it says how to add the column
    db.execute("CREATE TABLE plain_tasks LIKE email_tasks")
    status, answer = http(
        "POST",
        f"{url}/admin/queue/create",
        {"queue_name": "e2", "table_name": "plain_tasks", "columns": ["priority"]},
    )
    assert status == 400 and answer["message"].startswith(
        "columns: existing table 'plain_tasks' has no priority"
    )
    status, answer = http(
        "POST", f"{url}/admin/queue/create", {"queue_name": "e3", "table_name": "e3", "columns": ["colour"]}
    )
    assert status == 400 and answer["message"].startswith("columns: unknown column 'colour'")
    assert db.scalar("SELECT COUNT(*) FROM email_tasks") == 0
    assert db.scalar("SELECT COUNT(*) FROM queue_configs WHERE queue_name IN ('e2', 'e3')") == 0


def db_features(db, table: str) -> store.TaskTableFeatures:
    with db.connect() as conn, conn.cursor() as cur:
        return store.task_table_features(cur, table)

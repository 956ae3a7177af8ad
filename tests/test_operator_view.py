"""The operator's view costs what the active rows cost: outcome counters
written with the outcomes, keyset pages, and statements that never read the
finished history (counted with MariaDB's Handler_read counters)."""

from __future__ import annotations

from geventq import Status, admin_store, store
from geventq.db import quote_table
from tests.support import http, wait_for

FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)


def finished_rows(db, table: str) -> dict[str, int]:
    counts = db.status_counts(table)
    return {status.label: counts.get(status, 0) for status in FINISHED}


def counted(db, table: str) -> dict[str, int]:
    row = db.query(
        "SELECT COALESCE(SUM(done), 0) AS done, COALESCE(SUM(failed), 0) AS failed, "
        "COALESCE(SUM(cancelled), 0) AS cancelled FROM queue_minute_counts WHERE table_name = %s",
        (table,),
    )[0]
    return {name: int(value) for name, value in row.items()}


def test_counters_match_the_rows_after_a_mix_of_outcomes(db, executors):
    # Given a server, and a queue created through its API with a fractional scan_interval
    process = executors.start()
    created = http(
        "POST",
        f"{process.admin_url}/admin/queue/create",
        {"queue_name": "q", "table_name": "q_tasks", "scan_interval": 0.1, "max_workers": 20},
    )
    assert created[0] == 201 and created[1]["data"]["scan_interval"] == 0.1
    # and attempts a dead server left running: one out of retries, one with a cancel request
    db.execute(
        "INSERT INTO servers (server_id, state, last_heartbeat) "
        "VALUES ('ghost', 'online', NOW(3) - INTERVAL 1 HOUR)"
    )
    db.execute(
        "INSERT INTO q_tasks (id, task_type, status, server_id, start_time, retry_count, max_retries) VALUES "
        "(1000001, 'noop', 1, 'ghost', NOW(3) - INTERVAL 1 HOUR, 3, 3), "
        "(1000002, 'noop', 1, 'ghost', NOW(3) - INTERVAL 1 HOUR, 0, 3), "
        "(1000003, 'noop', 1, 'ghost', NOW(3) - INTERVAL 1 HOUR, 0, 3)"
    )
    db.execute(
        "INSERT INTO task_cancels (table_name, task_id, retry_count, server_id) "
        "VALUES ('q_tasks', 1000002, 0, 'ghost')"
    )
    # When tasks succeed, fail for good, are cancelled while pending, and the dead server's are rescued
    db.insert_tasks("q_tasks", "noop", 40)
    db.insert_tasks("q_tasks", "permanent", 7)
    db.insert_tasks("q_tasks", "fail", 3, max_retries=0)
    later = db.insert_tasks("q_tasks", "noop", 4, delay_seconds=3600)
    for task_id in later[:3]:
        assert http("POST", f"{process.admin_url}/admin/task/cancel?table=q_tasks&id={task_id}")[0] == 200
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM q_tasks WHERE status IN (0, 1)") == 1, timeout=30)
    # Then the counters say what the rows say, and queue/list answers from them
    rows = finished_rows(db, "q_tasks")
    assert rows == {"done": 41, "failed": 11, "cancelled": 4}
    assert counted(db, "q_tasks") == rows
    listed = next(
        q for q in http("GET", f"{process.admin_url}/admin/queue/list")[1]["data"] if q["queue_name"] == "q"
    )
    assert listed["counts"] == {"pending": 1, "running": 0, **rows}
    minutes = http("GET", f"{process.admin_url}/admin/queue/throughput?minutes=5")[1]["data"]["queues"]["q"]
    assert sum(point["done"] for point in minutes) == 41 and sum(point["failed"] for point in minutes) == 11


def test_keyset_pages_cover_every_row_once_while_rows_change(db):
    db.add_queue("q", "q_tasks")
    original = db.insert_tasks("q_tasks", "noop", 100)
    table = quote_table("q_tasks", None)
    seen: list[int] = []
    offset = 0
    with db.connect() as conn, conn.cursor() as cur:
        while True:
            rows = admin_store.list_tasks(cur, table, None, None, 7, offset)
            seen += [row["id"] for row in rows[:7]]
            # between pages, newer tasks arrive and older ones finish
            cur.execute("INSERT INTO q_tasks (task_type) VALUES ('noop'), ('noop')")
            cur.execute("UPDATE q_tasks SET status = 2 WHERE status = 0 ORDER BY id LIMIT 3")
            offset = admin_store.page_cursor(rows, 7)
            if offset is None:
                break
            assert offset < 0
    assert seen[:7] == sorted(original, reverse=True)[:7]
    assert sorted(seen) == sorted(set(seen)) and set(seen) == set(original)


def rows_read(cur, run) -> int:
    """Index and table rows the statements of `run(cur)` read (Handler_read_*)."""
    cur.execute("FLUSH STATUS")
    run(cur)
    cur.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
    return sum(int(row["Value"]) for row in cur.fetchall())


def test_the_operator_view_does_not_read_finished_history(db):
    # Given a table of 100,000 finished tasks and a few active ones
    db.add_queue("q", "q_tasks")
    db.execute(
        "INSERT INTO q_tasks (task_type, status, schedule_time, end_time) "
        "SELECT 'noop', 2 + seq % 3, NOW(3) - INTERVAL seq SECOND, NOW(3) - INTERVAL seq SECOND "
        "FROM seq_1_to_100000"
    )
    db.insert_tasks("q_tasks", "noop", 5)
    db.insert_tasks("q_tasks", "noop", 5, delay_seconds=3600)
    db.execute("UPDATE q_tasks SET status = 1, server_id = 's' WHERE status = 0 ORDER BY id LIMIT 2")
    db.execute("ANALYZE TABLE q_tasks")
    table = quote_table("q_tasks", None)
    with db.connect() as conn, conn.cursor() as cur:
        store.count_outcomes(cur, "q_tasks", "s", {Status.DONE: 3})
        # When the queue list, the throughput chart, the metrics' due count
        # and a deep task page are read, they read a bounded number of rows
        overview = []
        assert rows_read(cur, lambda c: overview.extend(admin_store.queue_overview(c))) < 200
        assert rows_read(cur, lambda c: admin_store.finished_per_minute(c, 1440)) < 200
        assert rows_read(cur, lambda c: admin_store.due_pending_by_queue(c, overview)) < 200
        deep: list = []
        assert (
            rows_read(cur, lambda c: deep.extend(admin_store.list_tasks(c, table, None, None, 50, -5000)))
            < 200
        )
        first: list = []
        assert (
            rows_read(cur, lambda c: first.extend(admin_store.list_tasks(c, table, None, None, 50, 0))) < 200
        )
    # and answer what the rows say
    assert next(queue for queue in overview if queue["queue_name"] == "q")["counts"] == {
        "pending": 8,
        "running": 2,
        "done": 3,
        "failed": 0,
        "cancelled": 0,
    }
    assert [row["id"] for row in deep] == list(range(4999, 4948, -1))
    assert len(first) == 51
    # (a positional offset that deep does read them: the reason for the cursor)
    with db.connect() as conn, conn.cursor() as cur:
        assert rows_read(cur, lambda c: admin_store.list_tasks(c, table, None, None, 50, 90_000)) > 90_000

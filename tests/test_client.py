"""geventq.Client in a plain threaded program (this test process is not
monkey-patched), ctx.enqueue in a handler, and the wake that makes a
Client-enqueued task start at once."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from gevent import monkey

from geventq import Client, Status
from geventq.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidTask,
    TaskNotFound,
    TaskStateError,
    UnknownQueue,
)
from tests.support import free_port, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


@pytest.fixture
def client(db):
    db.add_queue("q", "q_tasks", status=0)  # nobody runs it: rows stay as the client wrote them
    with Client(database=db.name) as made:
        yield made


def test_eight_threads_enqueue_at_once_without_gevent(client, db):
    # Given a plain threaded program: nothing is monkey-patched here
    assert not monkey.is_anything_patched()
    ids: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def produce(slot: int) -> None:
        start.wait()
        for n in range(100):
            ids[slot].append(client.enqueue("q", "record", {"slot": slot, "n": n}))
        ids[slot] += client.enqueue_many("q", [{"task_type": "record", "params": {"slot": slot}}] * 50)

    # When 8 threads share one client
    threads = [threading.Thread(target=produce, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then every call got its own row, and each id names the row it wrote
    every = [task_id for slot in ids for task_id in slot]
    assert len(every) == len(set(every)) == 8 * 150
    assert db.scalar("SELECT COUNT(*) FROM q_tasks") == 8 * 150
    rows = db.query("SELECT id, task_params FROM q_tasks WHERE id IN %s", (tuple(ids[3]),))
    assert all('"slot":3' in row["task_params"] for row in rows) and len(rows) == 150
    # and the pool kept to database.pool_size (20) connections
    connections = db.scalar("SELECT COUNT(*) FROM information_schema.processlist WHERE db = %s", (db.name,))
    assert 1 <= connections <= 20 + 1  # + the one counting


def test_enqueue_options_reach_the_row(client, db):
    # When tasks are enqueued with a delay, an aware time and max_retries
    now = db.scalar("SELECT NOW(3)")
    later = client.enqueue("q", "record", delay=120, max_retries=0)
    at = datetime.now(UTC) + timedelta(hours=1)
    fixed = client.enqueue("q", "record", ["a", 1], at=at)
    plain = client.enqueue("q", "record")
    # Then the database clock and time zone placed them, and params are JSON
    assert timedelta(seconds=119) < db.task("q_tasks", later)["schedule_time"] - now < timedelta(seconds=125)
    assert db.task("q_tasks", later)["max_retries"] == 0
    assert db.task("q_tasks", plain)["max_retries"] == 3 and db.task("q_tasks", plain)["task_params"] == "{}"
    offset = db.scalar("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
    expected = at.replace(tzinfo=None) + timedelta(seconds=offset)
    assert abs(db.task("q_tasks", fixed)["schedule_time"] - expected) < timedelta(milliseconds=2)
    assert client.get("q", fixed)["task_params"] == ["a", 1]
    assert client.get("q", 10**9) is None


def test_cancel_and_retry(client, db):
    # Given a pending task
    task_id = client.enqueue("q", "record")
    # When it is cancelled, then retried
    assert client.cancel("q", task_id)["status"] == CANCELLED
    with pytest.raises(TaskStateError, match=r"^id: task \d+ is cancelled; there is nothing to cancel"):
        client.cancel("q", task_id)
    retried = client.retry("q", task_id)
    # Then it is pending again, due now, with a fresh retry budget
    assert retried["status"] == PENDING and retried["retry_count"] == 0
    with pytest.raises(TaskStateError, match="only failed or cancelled"):
        client.retry("q", task_id)
    with pytest.raises(TaskNotFound, match=r"^id: queue q has no task with id 999999"):
        client.cancel("q", 999999)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.enqueue("nope", "record"), UnknownQueue, "^queue: no queue named 'nope'"),
        (lambda c: c.enqueue("q", "record", {1, 2}), InvalidTask, "^params: must be a dict, a list"),
        (
            lambda c: c.enqueue("q", "record", {"when": datetime.now()}),
            InvalidTask,
            "^params: cannot be written",
        ),
        (lambda c: c.enqueue("q", "record", {"x": float("nan")}), InvalidTask, "^params: cannot be written"),
        (lambda c: c.enqueue("q", "record", "[1, 2"), InvalidTask, "^params: is not valid JSON"),
        (lambda c: c.enqueue("q", "", {}), InvalidTask, "^task_type: must be a string of 1 to 50"),
        (
            lambda c: c.enqueue("q", "record", max_retries=True),
            InvalidTask,
            "^max_retries: must be an integer",
        ),
        (lambda c: c.enqueue("q", "record", delay=-1), InvalidTask, "^delay: must be seconds"),
        (
            lambda c: c.enqueue("q", "record", delay=1, at=datetime.now()),
            InvalidTask,
            "^at: give at or delay",
        ),
        (
            lambda c: c.enqueue("q", "record", priority=1),
            InvalidTask,
            "^priority: table q_tasks of queue q has no",
        ),
        (lambda c: c.enqueue("q", "record", dedupe_key="k"), InvalidTask, "^dedupe_key: table q_tasks"),
        (
            lambda c: c.enqueue_many("q", [{"task_type": "a"}, {"type": "b"}]),
            InvalidTask,
            r"^tasks\[1\]\.type: unknown",
        ),
        (lambda c: c.enqueue_many("q", [{"params": {}}]), InvalidTask, r"^tasks\[0\]\.task_type: required"),
        (lambda c: c.get("q", "7"), InvalidTask, "^id: must be a task id"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(client, db, call, error, message):
    with pytest.raises(error, match=message):
        call(client)
    assert db.scalar("SELECT COUNT(*) FROM q_tasks") == 0


def test_configuration_and_database_errors_are_named(db, tmp_path):
    with pytest.raises(ConfigError, match=r"database\.colour: unknown key"):
        Client(database=db.name, colour="blue")
    port = free_port()  # nothing listens there
    with (
        Client(database=db.name, port=port, connect_timeout=2) as down,
        pytest.raises(DatabaseUnavailable, match=f"at 127.0.0.1:{port} is unreachable"),
    ):
        down.enqueue("email_queue", "record")


def test_enqueue_many_is_one_statement_per_10000_and_all_or_nothing(client, db):
    # When 25,000 tasks go in one call
    ids = client.enqueue_many("q", ({"task_type": "record", "params": {"i": i}} for i in range(25_000)))
    # Then each id is its task's, in order
    assert len(set(ids)) == 25_000
    rows = db.query("SELECT id, task_params FROM q_tasks WHERE id IN %s", ((ids[0], ids[12_345], ids[-1]),))
    assert {row["id"]: row["task_params"] for row in rows} == {
        ids[0]: '{"i":0}',
        ids[12_345]: '{"i":12345}',
        ids[-1]: '{"i":24999}',
    }
    # and a batch with one bad task writes nothing at all
    with pytest.raises(InvalidTask, match=r"^tasks\[20000\]\.priority"):
        client.enqueue_many("q", [{"task_type": "record"}] * 20_000 + [{"task_type": "r", "priority": "x"}])
    assert db.scalar("SELECT COUNT(*) FROM q_tasks") == 25_000


def test_client_enqueued_task_starts_at_once_and_a_failed_wake_is_harmless(executors, db):
    # Given a server that scans its queue only once a minute, and a dead
    # server row that claims to run the queue too (its admin port is closed)
    db.add_queue("slow_scan", "slow_tasks", scan_interval=60)
    server = executors.start("server-001")
    wait_for(
        lambda: "slow_scan" in (db.scalar("SELECT queues FROM servers WHERE server_id = 'server-001'") or "")
    )
    db.execute(
        "INSERT INTO servers (server_id, host, admin_address, state, queues, last_heartbeat) "
        "VALUES ('ghost', 'localhost', %s, 'online', '[\"slow_scan\"]', NOW(3))",
        (f"127.0.0.1:{free_port()}",),
    )
    # Let the first scan pass: from now on only a wake starts a task early
    wait_for(lambda: server.output.count("queue slow_scan started") == 1)
    with Client(executors.config()) as client:
        # When the client enqueues
        task_id = client.enqueue("slow_scan", "record")
        # Then the task runs within seconds, not at the next scan a minute later
        wait_for(
            lambda: db.task("slow_tasks", task_id)["status"] == DONE, timeout=10, message="woken task done"
        )
        # and an enqueue whose wake cannot reach one server still succeeds
        assert client.enqueue("slow_scan", "record") > task_id


def test_handler_enqueues_follow_ups_with_ctx_enqueue(executors, db):
    # Given a queue whose handler enqueues two follow-ups into another queue
    db.add_queue("first", "first_tasks")
    db.add_queue("second", "second_tasks", scan_interval=60)
    executors.start("server-001")
    [parent] = db.insert_tasks("first_tasks", "follow_up", params={"queue": "second", "count": 2})
    # Then both follow-ups exist, point back at it, and ran (woken, not scanned)
    wait_for(lambda: db.status_counts("second_tasks") == {DONE: 2}, timeout=15, message="two follow-ups done")
    rows = db.query("SELECT task_params FROM second_tasks")
    assert [row["task_params"] for row in rows] == [f'{{"from":{parent}}}'] * 2
    assert db.task("first_tasks", parent)["status"] == DONE

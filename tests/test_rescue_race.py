"""The requeue paths against a newer claim, as exact interleavings of real
MariaDB connections: a rescue that waits on another server's row locks, a
reconcile racing a hand-back and a re-claim, a restart's orphan recovery.

The first test is the soak's failure of 2026-12-01 (issue 15): a rescue
statement blocked on a claim transaction that a cut-off server held open;
meanwhile the server it judged dead renewed its heartbeat and claimed a task;
when the lock was released the rescue went on and requeued that fresh claim,
so the task ran twice at once."""

from __future__ import annotations

import threading
import time

import pymysql
import pytest

from geventq import Status, store
from geventq.db import quote_table
from tests.support import wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
TABLE = "email_tasks"
TIMEOUT = 3.0  # heartbeat_timeout of these servers


@pytest.fixture
def connect(db):
    """Connections as geventq opens them: READ COMMITTED, rows matched."""
    opened = []

    def open_connection(autocommit: bool = True):
        conn = pymysql.connect(
            host="127.0.0.1",
            user="root",
            password="",
            database=db.name,
            autocommit=autocommit,
            cursorclass=pymysql.cursors.DictCursor,
            client_flag=pymysql.constants.CLIENT.FOUND_ROWS,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()


def add_server(db, server_id: str, heartbeat_age: float) -> None:
    db.execute(
        "INSERT INTO servers (server_id, host, pid, admin_address, version, started_at, "
        "last_heartbeat, state, queues, running) VALUES (%s, 'h', 1, '', 't', NOW(3), "
        "NOW(3) - INTERVAL %s MICROSECOND, 'online', '[]', 0)",
        (server_id, int(heartbeat_age * 1e6)),
    )


def add_task(
    db,
    *,
    age: float,
    status: Status = PENDING,
    server_id: str = "",
    retry_count: int = 0,
    started_age: float | None = None,
) -> int:
    db.execute(
        f"INSERT INTO {TABLE} (task_type, status, server_id, retry_count, max_retries, "
        "schedule_time, start_time) VALUES ('t', %s, %s, %s, 3, "
        "NOW(3) - INTERVAL %s MICROSECOND, NOW(3) - INTERVAL %s MICROSECOND)",
        (
            int(status),
            server_id,
            retry_count,
            int(age * 1e6),
            None if started_age is None else int(started_age * 1e6),
        ),
    )
    return db.scalar(f"SELECT MAX(id) FROM {TABLE}")


def waiting_on_a_lock(db, conn) -> bool:
    return bool(
        db.scalar(
            "SELECT COUNT(*) FROM information_schema.innodb_trx "
            "WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'",
            (conn.thread_id(),),
        )
    )


def claim(conn, server_id: str, limit: int) -> list[int]:
    with conn.cursor() as cur:
        rows = store.claim_due_tasks_skip_locked(cur, quote_table(TABLE, None), server_id, ("t",), limit, "q")
    return [row["id"] for row in rows]


def test_a_rescue_waiting_on_locks_never_requeues_a_claim_made_after_its_decision(db, connect):
    table = quote_table(TABLE, None)
    # Given X judged dead (no heartbeat for 60 s) with an orphaned attempt,
    # and Y alive, holding a claim transaction open (cut off before COMMIT)
    add_server(db, "X", 60)
    add_server(db, "Y", 0)
    add_server(db, "R", 0)
    orphan = add_task(db, age=60, status=RUNNING, server_id="X", started_age=59)
    y_task = add_task(db, age=30)
    x_task = add_task(db, age=10)
    y_conn = connect(autocommit=False)
    assert claim(y_conn, "Y", 1) == [y_task]
    # When R decides the rescue and its UPDATE blocks on Y's row
    rescuer, rescued = connect(), {}

    def rescue():
        with rescuer.cursor() as cur:
            decided_at, alive = store.rescue_decision(cur, TIMEOUT)
            rescued["n"] = store.rescue_dead_servers_tasks(cur, table, TABLE, decided_at, alive)

    thread = threading.Thread(target=rescue)
    thread.start()
    wait_for(lambda: waiting_on_a_lock(db, rescuer), timeout=10, message="the rescue waiting on Y's lock")
    # and meanwhile X renews its heartbeat and claims a task, committed
    x_conn = connect(autocommit=False)
    with x_conn.cursor() as cur:
        assert store.beat(cur, "X", "online", "[]", 0) == 1
    x_conn.commit()
    assert claim(x_conn, "X", 5) == [x_task]
    x_conn.commit()
    # and then Y's transaction ends and the rescue goes on
    y_conn.commit()
    thread.join(15)
    assert not thread.is_alive()
    # Then the orphan of X's dead past is rescued, counted as an attempt,
    orphan_row = db.task(TABLE, orphan)
    assert (orphan_row["status"], orphan_row["retry_count"]) == (PENDING, 1)
    assert "server X stopped heartbeating" in orphan_row["error_msg"]
    # but X's new claim is still X's running attempt, untouched
    x_row = db.task(TABLE, x_task)
    assert (x_row["status"], x_row["server_id"], x_row["retry_count"]) == (RUNNING, "X", 0)
    assert x_row["error_msg"] is None
    assert rescued["n"] == 1
    # and so is Y's (Y is alive)
    assert db.task(TABLE, y_task)["status"] == RUNNING


def test_a_rescue_decided_while_everyone_lives_rescues_nothing(db, connect):
    add_server(db, "X", 0)
    add_task(db, age=5, status=RUNNING, server_id="X", started_age=5)
    with connect().cursor() as cur:
        decided_at, alive = store.rescue_decision(cur, TIMEOUT)
        assert sorted(alive) == ["X"]
        assert store.rescue_dead_servers_tasks(cur, quote_table(TABLE, None), TABLE, decided_at, alive) == 0


def test_a_rescue_takes_rows_of_unknown_and_offline_servers_too(db, connect):
    # Status-1 rows whose server has no row at all, or went offline without handing them back
    add_server(db, "gone", 0)
    db.execute("UPDATE servers SET state = 'offline' WHERE server_id = 'gone'")
    lost = [
        add_task(db, age=5, status=RUNNING, server_id=owner, started_age=5) for owner in ("gone", "nobody")
    ]
    with connect().cursor() as cur:
        decided_at, alive = store.rescue_decision(cur, TIMEOUT)
        assert alive == []
        assert store.rescue_dead_servers_tasks(cur, quote_table(TABLE, None), TABLE, decided_at, alive) == 2
    assert [db.task(TABLE, task)["status"] for task in lost] == [PENDING, PENDING]


def test_reconcile_never_requeues_a_newer_claim_of_the_same_attempt(db, connect):
    """A shutdown hand-back keeps retry_count, so (status 1, server, retry_count)
    alone cannot tell the unattended claim from a newer one of the same attempt."""
    table = quote_table(TABLE, None)
    add_server(db, "A", 0)
    task = add_task(db, age=60, status=RUNNING, server_id="A", started_age=30)
    with connect().cursor() as cur:
        # Given reconcile found A's 30 s old claim unattended
        [found] = store.find_own_claims(cur, table, "A", 10)
        # When, before it requeues, the task is handed back and A claims it again
        assert store.release_tasks(cur, table, TABLE, "A", 0, [task]) == 1
        assert claim(connect(), "A", 1) == [task]
        # Then the requeue finds nothing to do
        assert (
            store.requeue_unattended_claim(cur, table, TABLE, "A", found["id"], found["retry_count"], 10) == 0
        )
    row = db.task(TABLE, task)
    assert (row["status"], row["retry_count"]) == (RUNNING, 0)


def test_orphan_recovery_leaves_claims_made_while_it_waited(db, connect):
    """A restart recovers what its server_id left running; should a process of
    that id claim while the recovery waits on a lock, its claim stays."""
    table = quote_table(TABLE, None)
    orphan = add_task(db, age=60, status=RUNNING, server_id="A", started_age=59)
    blocker = add_task(db, age=50, status=RUNNING, server_id="A", started_age=49)
    fresh = add_task(db, age=10)
    # Given another transaction holds the row lock of one of A's rows
    holder = connect(autocommit=False)
    with holder.cursor() as cur:
        cur.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (blocker,))
    recoverer, recovered = connect(), {}

    def recover():
        with recoverer.cursor() as cur:
            recovered["n"] = store.recover_own_orphans(cur, table, TABLE, "A")

    thread = threading.Thread(target=recover)
    thread.start()
    wait_for(lambda: waiting_on_a_lock(db, recoverer), timeout=10, message="the recovery waiting")
    # When A claims a task meanwhile (a millisecond later at least, by the database clock)
    time.sleep(0.01)
    assert claim(connect(), "A", 1) == [fresh]
    holder.commit()
    thread.join(15)
    # Then the old rows are recovered and the new claim is not
    assert recovered["n"] == 2
    assert [db.task(TABLE, task)["status"] for task in (orphan, blocker)] == [PENDING, PENDING]
    row = db.task(TABLE, fresh)
    assert (row["status"], row["retry_count"]) == (RUNNING, 0)


def test_reconcile_covers_tables_of_queues_this_server_no_longer_runs(db, tmp_path):
    """Seen in the soak under two CPU hogs: s2's lease lapsed while it ran
    tasks of a queue moved to it; the lapse stopped them, the queue moved
    back to s1, and the rows stayed `running` under s2, alive, forever:
    reconcile looked only at the queues s2 still ran, and nobody rescues the
    rows of a live server."""
    from geventq import config as geventq_config
    from geventq.attempts import ClaimedAttempts
    from geventq.catalog import QueueCatalog
    from geventq.db import Database
    from geventq.queues import RunningQueues
    from geventq.servers import Reconcile
    from tests.support import write_config

    # Given A alive, holding a 30 s old status-1 row of a table whose queue A does not run
    add_server(db, "A", 0)
    stopped = add_task(db, age=60, status=RUNNING, server_id="A", started_age=30)
    database = Database(geventq_config.load(write_config(tmp_path, db), environ={}).database, size=2)
    catalog = QueueCatalog()
    catalog.update([{"queue_name": "q", "table_name": TABLE}])
    try:
        # When A reconciles
        reconcile = Reconcile(database, "A", catalog, RunningQueues(), ClaimedAttempts())
        requeued = reconcile.reconcile_unattended_claims()
    finally:
        database.close()
    # Then the row is pending again, counted as a lost attempt
    row = db.task(TABLE, stopped)
    assert requeued == 1
    assert (row["status"], row["retry_count"]) == (PENDING, 1)
    assert "was lost before it started" in row["error_msg"]

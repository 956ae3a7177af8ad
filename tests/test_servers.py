"""Several real executor processes on one database: exactly-once across
servers, pinned and moved queues, concurrency caps, crash rescue, drain."""

import collections
import time
from datetime import datetime, timedelta
from pathlib import Path

from geventq import Status
from tests.invariants import max_overlap
from tests.support import http, running_queue_on, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def executions(db, task_type_table="q_tasks"):
    return db.query(
        "SELECT task_id, retry_count, server_id, started_at, finished_at FROM executions "
        "WHERE table_name = %s",
        (task_type_table,),
    )


def test_three_servers_run_every_task_exactly_once(db, executors):
    # Given three servers running one open queue (all of them, before any task
    # exists: a server still starting must not find the work already done)
    db.add_queue("q", "q_tasks", max_workers=20)
    servers = ("s1", "s2", "s3")
    for server in servers:
        executors.start(server)
    wait_for(lambda: running_queue_on(db, servers, "q"), message="the queue running on all three")
    # When 2,000 due tasks of 0.2 s arrive: two servers alone need 10 s for them,
    # so the third, which scans at least every second, must take its share
    ids = db.insert_tasks("q_tasks", "record", 2000, params={"seconds": 0.2})
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 2000}, timeout=90, message="all done")
    # Then every task ran exactly once, and the work was shared
    runs = executions(db)
    per_task = collections.Counter(run["task_id"] for run in runs)
    assert sorted(per_task) == ids
    assert set(per_task.values()) == {1}
    per_server = collections.Counter(run["server_id"] for run in runs)
    assert set(per_server) == set(servers)
    # and the task rows name the server that ran them
    owners = {row["id"]: row["server_id"] for row in db.query("SELECT id, server_id FROM q_tasks")}
    assert all(owners[run["task_id"]] == run["server_id"] for run in runs)


def test_conditional_update_claims_are_exactly_once_too(db, executors):
    """The claim for servers without SKIP LOCKED (MariaDB < 10.6, MySQL < 8),
    forced here with database.claim_mode."""
    db.add_queue("q", "q_tasks", max_workers=10)
    ids = db.insert_tasks("q_tasks", "record", 600)
    for server in ("s1", "s2", "s3"):
        process = executors.start(server, database={"claim_mode": "conditional_update"})
        wait_for(lambda process=process: "claims with conditional UPDATE" in process.output)
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 600}, timeout=60, message="all done")
    per_task = collections.Counter(run["task_id"] for run in executions(db))
    assert sorted(per_task) == ids
    assert set(per_task.values()) == {1}


def test_pinned_queues_run_only_on_their_server(db, executors):
    db.add_queue("qa", "qa_tasks", server_id="s1")
    db.add_queue("qb", "qb_tasks", server_id="s2")
    db.insert_tasks("qa_tasks", "record", 30)
    db.insert_tasks("qb_tasks", "record", 30)
    executors.start("s1")
    executors.start("s2")
    wait_for(
        lambda: db.status_counts("qa_tasks") == {DONE: 30} and db.status_counts("qb_tasks") == {DONE: 30}
    )
    servers = {
        row["table_name"]: row["servers"]
        for row in db.query(
            "SELECT table_name, GROUP_CONCAT(DISTINCT server_id) AS servers "
            "FROM executions GROUP BY table_name"
        )
    }
    assert servers == {"qa_tasks": "s1", "qb_tasks": "s2"}


def test_moving_a_queue_takes_effect_within_two_syncs(db, executors):
    # Given a queue pinned to s1, busy with slow tasks
    queue_id = db.add_queue("q", "q_tasks", server_id="s1", max_workers=4)
    ids = db.insert_tasks("q_tasks", "record", 400, params={"seconds": 0.05})
    executors.start("s2")
    executors.start("s1")
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions") >= 4, message="s1 working")
    # When it is moved to s2 by SQL
    db.execute("UPDATE queue_configs SET server_id = 's2' WHERE id = %s", (queue_id,))
    moved_at = time.monotonic()
    # Then s2 starts on it within two sync intervals (0.5 s each) and s1 stops claiming
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions WHERE server_id = 's2'"), timeout=5)
    assert time.monotonic() - moved_at < 2 * 0.5 + 1.0
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 400}, timeout=30)
    runs = executions(db)
    assert sorted(run["task_id"] for run in runs) == ids  # nothing lost, nothing doubled
    last_s1_start = max(run["started_at"] for run in runs if run["server_id"] == "s1")
    first_s2_start = min(run["started_at"] for run in runs if run["server_id"] == "s2")
    # s1 started nothing after the move had been seen by s2
    assert last_s1_start <= first_s2_start + timedelta(seconds=1)


def test_max_workers_is_reached_and_never_exceeded(db, executors):
    db.add_queue("q", "q_tasks", max_workers=5)
    db.insert_tasks("q_tasks", "record", 40, params={"seconds": 0.2})
    executors.start()
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 40}, timeout=30)
    intervals = [(run["started_at"], run["finished_at"]) for run in executions(db)]
    assert max_overlap(intervals) == 5


def concurrency_between(db, since, until) -> int:
    """Most handlers running at once at any handler start within [since, until)."""
    runs = [(run["started_at"], run["finished_at"] or datetime.max) for run in executions(db)]
    starts = [start for start, _ in runs if since <= start < until]
    return max((sum(1 for start, end in runs if start <= instant < end) for instant in starts), default=0)


def test_resize_up_and_down_at_runtime(db, executors):
    queue_id = db.add_queue("q", "q_tasks", max_workers=2)
    db.insert_tasks("q_tasks", "record", 150, params={"seconds": 0.3})
    executors.start()
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions") >= 4)
    # Up: the new cap is used within one sync (0.5 s)
    up_at = db.scalar("SELECT NOW(6)")
    db.execute("UPDATE queue_configs SET max_workers = 6 WHERE id = %s", (queue_id,))
    time.sleep(2.0)
    # Down: running tasks finish (0.3 s), then the lower cap holds
    down_at = db.scalar("SELECT NOW(6)")
    db.execute("UPDATE queue_configs SET max_workers = 1 WHERE id = %s", (queue_id,))
    time.sleep(2.0)
    end_at = db.scalar("SELECT NOW(6)")
    assert concurrency_between(db, datetime.min, up_at) == 2
    assert concurrency_between(db, up_at + timedelta(seconds=0.8), down_at) == 6
    assert concurrency_between(db, down_at + timedelta(seconds=0.8), end_at) == 1
    # No running task was cancelled by a resize (each ran once, to its end)
    assert (
        db.scalar(
            "SELECT COUNT(*) FROM executions WHERE finished_at IS NULL AND started_at < %s",
            (end_at - timedelta(seconds=0.5),),
        )
        == 0
    )
    counts = db.query("SELECT COUNT(*) AS runs, COUNT(DISTINCT task_id) AS tasks FROM executions")[0]
    assert counts["runs"] == counts["tasks"]


def test_sigkill_mid_task_is_rescued_by_another_server(db, executors):
    # Given s1 running long tasks, and s2 with no access to the queue yet
    queue_id = db.add_queue("q", "q_tasks", server_id="s1", max_workers=3)
    ids = db.insert_tasks("q_tasks", "record", 3, params={"seconds": 60}, max_retries=2)
    s1 = executors.start("s1")
    executors.start("s2")
    wait_for(lambda: db.scalar(f"SELECT COUNT(*) FROM q_tasks WHERE status = {RUNNING:d}") == 3)
    # When s1 is killed and the queue opened to any server, with short tasks now
    s1.kill()
    killed_at = time.monotonic()
    db.execute("UPDATE q_tasks SET task_params = '{\"seconds\": 0}'")
    db.execute("UPDATE queue_configs SET server_id = '' WHERE id = %s", (queue_id,))
    # Then after the heartbeat timeout (3 s) s2 rescues and finishes them
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 3}, timeout=20)
    assert time.monotonic() - killed_at >= 2.5
    rows = db.query("SELECT id, retry_count, server_id FROM q_tasks ORDER BY id")
    assert [row["id"] for row in rows] == ids
    assert all(row["retry_count"] == 1 and row["server_id"] == "s2" for row in rows)


def test_rescue_exhausting_retries_fails_the_task(db, executors):
    db.add_queue("q", "q_tasks", server_id="s1")
    [task_id] = db.insert_tasks("q_tasks", "record", params={"seconds": 60}, max_retries=0)
    s1 = executors.start("s1")
    executors.start("s2")
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == RUNNING)
    s1.kill()
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == FAILED, timeout=20)
    task = db.task("q_tasks", task_id)
    assert task["retry_count"] == 1 and "server s1 stopped heartbeating" in task["error_msg"]
    assert task["end_time"] is not None


def test_restart_under_same_server_id_recovers_orphans_at_once(db, executors):
    db.add_queue("q", "q_tasks")
    [task_id] = db.insert_tasks("q_tasks", "flaky", params={"succeed_on": 1}, max_retries=3)
    db.execute("UPDATE q_tasks SET task_type = 'hang', task_params = '{\"seconds\": 60}'")
    first = executors.start("s1")
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == RUNNING)
    first.kill()
    db.execute("UPDATE q_tasks SET task_type = 'record', task_params = '{}'")
    executors.start("s1")
    # No heartbeat timeout to wait for: the new process requeues its own orphan on start
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=5)
    assert db.task("q_tasks", task_id)["retry_count"] == 1


def test_sigterm_drains_and_leaves_nothing_running(db, executors):
    db.add_queue("q", "q_tasks", max_workers=5)
    quick = db.insert_tasks("q_tasks", "record", 5, params={"seconds": 1})
    process = executors.start(executor={"shutdown_timeout": 10})
    wait_for(lambda: db.scalar(f"SELECT COUNT(*) FROM q_tasks WHERE status = {RUNNING:d}") == 5)
    slow = db.insert_tasks("q_tasks", "record", 5)  # due, but must not be claimed after SIGTERM
    process.terminate()
    assert process.wait(20) == 0
    assert all(db.task("q_tasks", task_id)["status"] == DONE for task_id in quick)
    assert all(db.task("q_tasks", task_id)["status"] == PENDING for task_id in slow)
    assert db.scalar("SELECT state FROM servers WHERE server_id = 'server-001'") == "offline"


def test_sigterm_past_shutdown_timeout_returns_tasks_uncounted(db, executors):
    db.add_queue("q", "q_tasks", max_workers=3)
    ids = db.insert_tasks("q_tasks", "hang", 3, params={"seconds": 60})
    process = executors.start(executor={"shutdown_timeout": 1})
    wait_for(lambda: db.scalar(f"SELECT COUNT(*) FROM q_tasks WHERE status = {RUNNING:d}") == 3)
    started = time.monotonic()
    process.terminate()
    assert process.wait(20) == 0
    assert time.monotonic() - started < 8
    rows = [db.task("q_tasks", task_id) for task_id in ids]
    assert all(row["status"] == PENDING and row["retry_count"] == 0 for row in rows)
    assert "returned 3 unfinished tasks" in process.output


def test_killing_every_connection_twice_loses_and_doubles_nothing(db, executors, tmp_path):
    runs_file = tmp_path / "runs.txt"
    db.add_queue("q", "q_tasks", max_workers=20)
    ids = db.insert_tasks("q_tasks", "touch", 3000, params={"file": str(runs_file), "seconds": 0.01})
    process = executors.start()
    for _ in range(2):
        wait_for(lambda: runs_file.exists() and len(runs_file.read_text().splitlines()) > 300)
        killed = kill_connections(db)
        assert killed > 0
        time.sleep(0.5)
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 3000}, timeout=60)
    runs = collections.Counter(int(line.split()[1]) for line in Path(runs_file).read_text().splitlines())
    assert sorted(runs) == ids
    assert set(runs.values()) == {1}
    assert process.process.poll() is None


def kill_connections(db) -> int:
    ids = [
        row["ID"]
        for row in db.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            (db.name,),
        )
    ]
    for connection_id in ids:
        try:
            db.execute(f"KILL {int(connection_id)}")
        except Exception:  # noqa: BLE001 - it may have gone already
            pass
    return len(ids)


def test_user_made_table_with_only_the_base_columns(db, executors):
    db.execute("""CREATE TABLE plain_tasks (
        id BIGINT AUTO_INCREMENT PRIMARY KEY,
        task_type VARCHAR(50) NOT NULL,
        task_params TEXT,
        status TINYINT NOT NULL DEFAULT 0,
        schedule_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        start_time DATETIME NULL,
        end_time DATETIME NULL,
        retry_count INT NOT NULL DEFAULT 0,
        max_retries INT NOT NULL DEFAULT 3,
        error_msg TEXT,
        server_id VARCHAR(50) NULL,
        created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        INDEX idx_status_schedule (status, schedule_time))""")
    db.add_queue("plain", "plain_tasks")
    db.execute("INSERT INTO plain_tasks (task_type, task_params) VALUES ('record', '{}'), ('flaky', '{}')")
    executors.start()
    wait_for(lambda: db.status_counts("plain_tasks") == {DONE: 2}, timeout=15)


def test_a_task_created_through_another_server_starts_at_once_on_a_slow_scanning_queue(db, executors):
    """Other servers wake a queue's scanner only where the `servers` rows say
    it runs: a server must list a queue it starts at once, not at its next
    heartbeat, and a server sending a wake must re-read a stale view before
    giving up on a queue nobody seemed to run."""
    # Given queues only server sb runs, scanned every 120 s, and heartbeats
    # every 20 s, so that neither a scan nor a heartbeat can explain a pickup
    db.add_queue("q", "q_tasks", server_id="sb", scan_interval=120)
    db.add_queue("later", "later_tasks", server_id="sb", scan_interval=120, status=0)
    slow_heartbeat = {"heartbeat_interval": 20, "heartbeat_timeout": 60}
    a = executors.start("sa", executor=slow_heartbeat)
    executors.start("sb", executor=slow_heartbeat)
    # Then sb's row lists the queue long before its next heartbeat
    wait_for(lambda: running_queue_on(db, ["sb"], "q"), timeout=10, message="sb's row listing q")
    # When a task is created through sa's API, which does not run the queue
    first = create_through(a.admin_url, "q_tasks")
    # Then sb starts it within seconds (sa woke it), not at its next scan
    assert started_within(db, "q_tasks", first, seconds=10) == "sb"
    # Given a queue that starts running on sb after sa's view of who runs what was read
    time.sleep(1.2)  # sa's view is now older than its one-second refresh
    db.execute("UPDATE queue_configs SET status = 1 WHERE queue_name = 'later'")
    wait_for(lambda: running_queue_on(db, ["sb"], "later"), timeout=10, message="sb's row listing later")
    # When a task is created through sa for it, then sb starts it within seconds too
    task_id = create_through(a.admin_url, "later_tasks")
    assert started_within(db, "later_tasks", task_id, seconds=10) == "sb"


def create_through(admin_url: str, table: str) -> int:
    status, body = http("POST", f"{admin_url}/admin/task/create?table={table}", {"task_type": "record"})
    assert status == 201, body
    return body["data"]["id"]


def started_within(db, table: str, task_id: int, seconds: float) -> str:
    """The server that started the task, which it did within `seconds` of its creation."""
    row = wait_for(
        lambda: db.query(
            f"SELECT server_id, TIMESTAMPDIFF(MICROSECOND, created_at, start_time) / 1e6 AS pickup "
            f"FROM `{table}` WHERE id = %s AND start_time IS NOT NULL",
            (task_id,),
        ),
        timeout=seconds + 5,
        message=f"task {task_id} of {table} started",
    )[0]
    assert row["pickup"] < seconds, row
    return row["server_id"]

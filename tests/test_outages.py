"""The database going away under running servers, a handler that kills its
own process, and the executor's memory over a long run of tasks.

GEVENTQ_OUTAGE_SECONDS sets the outage (default 8; the README's figures are
for 30). The 100,000-task memory soak takes about a minute.
"""

import os
import re
import time
from datetime import datetime

import pytest

from geventq import Status
from tests.invariants import check, log_fault
from tests.support import wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
OUTAGE_SECONDS = float(os.environ.get("GEVENTQ_OUTAGE_SECONDS", 8))
FAST = {"heartbeat_interval": 0.5, "heartbeat_timeout": 3}
# What a server logs while the database is away; each of these comes from
# one place that says it at most once per OUTAGE_LOG_INTERVAL.
OUTAGE_LINE = re.compile(
    r"unreachable|unavailable|claim failed|waiting for the database"
    r"|config sync: database"
)
OUTAGE_LOG_INTERVAL = 10.0


@pytest.fixture
def chaos_db(chaos_db):
    chaos_db.execute("DELETE FROM queue_configs")  # the sample queues would only add log lines
    return chaos_db


def log_time(line: str) -> datetime | None:
    try:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None


def outage_lines(output: str, since: datetime, until: datetime) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if OUTAGE_LINE.search(line) and (stamp := log_time(line)) and since <= stamp <= until
    ]


def test_database_away_servers_wait_it_out_and_lose_nothing(chaos_db, proxy, executors):
    db = chaos_db
    db.add_queue("q1", "q1_tasks", max_workers=20, task_timeout=30)
    db.add_queue("q2", "q2_tasks", max_workers=20, task_timeout=30)
    # Given two servers reaching the database through one proxy, busy with tasks
    via_proxy = {"host": "127.0.0.1", "port": proxy.port, "read_timeout": 3, "connect_timeout": 2}
    servers = [executors.start(server_id, executor=FAST, database=via_proxy) for server_id in ("s1", "s2")]
    for table in ("q1_tasks", "q2_tasks"):
        db.insert_tasks(table, "chaos", 1500, params={"kind": "fast"}, max_retries=5)
        db.insert_tasks(table, "chaos", 10, params={"kind": "slow", "seconds": 2}, max_retries=5)
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions") > 300, timeout=20)
    # When the database goes away for OUTAGE_SECONDS: connections cut, new ones refused
    proxy.set_mode("refuse")
    proxy.set_mode("drop")
    proxy.set_mode("refuse")
    away_at = datetime.now()
    for table in ("q1_tasks", "q2_tasks"):  # work keeps arriving meanwhile
        db.insert_tasks(table, "chaos", 500, params={"kind": "fast"}, max_retries=5)
    time.sleep(OUTAGE_SECONDS)
    # Then the servers are still running
    assert all(server.process.poll() is None for server in servers)
    back_at = datetime.now()
    proxy.set_mode("pass")
    # and once it is back they resume on their own and finish everything
    wait_for(
        lambda: (
            db.status_counts("q1_tasks").keys() == {DONE} and db.status_counts("q2_tasks").keys() == {DONE}
        ),
        timeout=60,
        message="all done",
    )
    assert db.scalar("SELECT COUNT(*) FROM q1_tasks") + db.scalar("SELECT COUNT(*) FROM q2_tasks") == 4020
    report = check(db.connect(), ["q1_tasks", "q2_tasks"])
    assert report.ok, report.text()
    assert all("heartbeat lease renewed" in server.output for server in servers)
    # and each said the database was away once per interval, not once per attempt:
    # claims of q1, claims of q2, outcomes, maintenance, schedule firing and
    # config sync, each at most once per OUTAGE_LOG_INTERVAL
    per_source = int(OUTAGE_SECONDS // OUTAGE_LOG_INTERVAL) + 1
    for server in servers:
        lines = outage_lines(server.output, away_at, back_at)
        sync_lines = [line for line in lines if "config sync" in line]
        print(
            f"{server.server_id}: {len(lines)} outage lines in {OUTAGE_SECONDS:g}s, "
            f"{len(sync_lines)} of them from config sync"
        )
        others = [line for line in lines if line not in sync_lines]
        assert 0 < len(others) <= 5 * per_source, "\n".join(others)
        assert len(sync_lines) <= per_source, "\n".join(sync_lines)


def test_a_handler_that_exits_its_process_is_rescued_like_a_crash(chaos_db, executors):
    db = chaos_db
    # Given s1 running a queue pinned to it, and s2 beside it
    queue_id = db.add_queue("q", "q_tasks", server_id="s1")
    s1 = executors.start("s1", executor=FAST)
    s2 = executors.start("s2", executor=FAST)
    # When a handler calls os._exit on its first attempt
    [task_id] = db.insert_tasks("q_tasks", "chaos", params={"kind": "exit", "exit_attempts": 1})
    assert s1.process.wait(15) == 3
    died_at = time.monotonic()
    with db.connect() as conn, conn.cursor() as cur:
        log_fault(cur, "exit", "s1", s1.process.pid)
    db.execute("UPDATE queue_configs SET server_id = '' WHERE id = %s", (queue_id,))
    # Then s2 rescues it once s1's heartbeat is older than the timeout, and runs it
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=20)
    assert time.monotonic() - died_at >= 3 - 1.0
    row = db.task("q_tasks", task_id)
    assert (row["retry_count"], row["server_id"]) == (1, "s2")
    runs = db.query("SELECT server_id, retry_count, ended FROM executions ORDER BY started_at")
    assert runs == [
        {"server_id": "s1", "retry_count": 0, "ended": None},
        {"server_id": "s2", "retry_count": 1, "ended": "ok"},
    ]
    assert "rescued 1 tasks in q_tasks" in s2.output
    assert check(db.connect(), ["q_tasks"]).ok


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_rss_stays_flat_over_100k_noop_tasks(chaos_db, executors):
    db = chaos_db
    db.add_queue("q", "q_tasks", max_workers=100)
    server = executors.start("s1")
    pid = server.process.pid
    # Warm up: pools, caches and the allocator's arenas settle in the first 20,000
    db.insert_tasks("q_tasks", "noop", 20_000)
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 20_000}, timeout=120)
    start_rss = rss_kib(pid)
    samples = [start_rss]
    for _ in range(10):
        db.insert_tasks("q_tasks", "noop", 10_000)
        wait_for(lambda: db.status_counts("q_tasks").keys() == {DONE}, timeout=120)
        samples.append(rss_kib(pid))
    end_rss = samples[-1]
    mib = [round(sample / 1024, 1) for sample in samples]
    print(
        f"executor RSS over 100,000 no-op tasks: start {mib[0]} MiB, end {mib[-1]} MiB; "
        f"every 10,000 tasks: {mib}"
    )
    assert db.status_counts("q_tasks") == {DONE: 120_000}
    # Flat: no more than 10% (or 16 MiB) above where it stood after the warm-up.
    # On a busy machine the job-log writer thread can fall behind for a while
    # (up to 50,000 lines wait, then new runs wait): that raises the high-water
    # mark once, by up to about 10 MiB (seen: 48.0 MiB for 70,000 tasks, then
    # 52.3 and 56.4, flat after), and the allocator keeps it. A leak of 200
    # bytes a task or more still fails here.
    assert end_rss <= max(start_rss * 1.10, start_rss + 16 * 1024), samples

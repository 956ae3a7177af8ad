"""geventq on a real 3-node MariaDB Galera cluster, started inside the test
(tests/owngalera.py): one executor per node, 3,000 tasks on one open queue,
and one database node killed with SIGKILL mid-run. Its executor fails over to
the next node in its `database.hosts`; every task ends done, no attempt runs
twice and no task runs twice at once (tests/invariants.py, on the runs the
`chaos` handler records on the machine's own MariaDB).

Without galera-4 the cluster does not start and these tests fail: they are
never skipped. The ports are fixed (3311-3313, 4571-4573, 4581-4583,
4591-4593): run them under `flock /tmp/geventq-heavy.lock`.
"""

from __future__ import annotations

import json
import threading

import pymysql
import pytest

from geventq import Status, store
from tests.invariants import log_fault, prepare
from tests.owngalera import GaleraCluster
from tests.support import (
    ExecutorProcess,
    TestDatabase,
    assert_all_done_exactly_once,
    servers_that_ran_after,
    wait_for,
    write_config,
)

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
TABLE = "galera_tasks"
TASKS = 3000
KILLED = 1  # index of the node killed mid-run (node 2)


@pytest.fixture(scope="module")
def cluster():
    with GaleraCluster() as started:
        yield started


def connect(port: int, database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        host="127.0.0.1",
        port=port,
        user="root",
        password="",
        database=database,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
    )


def test_a_named_lock_has_one_holder_across_the_nodes(cluster):
    # Given the lock table, and two connections on each node waiting at a barrier
    tasks_db = TestDatabase(port=cluster.nodes[0].port).create()
    connections = [connect(node.port, tasks_db.name) for node in cluster.nodes for _ in range(2)]
    barrier, winners, errors = threading.Barrier(len(connections)), [], []

    def contend(conn, holder: str) -> None:
        with conn.cursor() as cur:
            barrier.wait()
            for _ in range(4):  # a certification failure is retried, as Database.call does
                try:
                    if store.try_named_lock(cur, "galera", holder, 30):
                        winners.append(holder)
                    return
                except pymysql.err.OperationalError as error:
                    errors.append(error.args[0])

    try:
        threads = [
            threading.Thread(target=contend, args=(conn, f"h{n}")) for n, conn in enumerate(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        # Then exactly one holder took it, whatever node it was on
        assert len(winners) == 1, (winners, errors)
        assert set(errors) <= {1213}, errors
    finally:
        for conn in connections:
            conn.close()
        tasks_db.drop()


def test_executors_fail_over_when_a_database_node_dies(cluster, db, tmp_path):
    # Given the task table on the cluster, the runs recorded on the machine's
    # MariaDB in a database of the same name (the `db` fixture)
    tasks_db = TestDatabase(db.name, port=cluster.nodes[0].port).create()
    with db.connect() as conn, conn.cursor() as cur:
        prepare(cur)
    tasks_db.execute("DELETE FROM queue_configs")
    tasks_db.add_queue("galera", TABLE, max_workers=30, scan_interval=1, task_timeout=10)
    # and one executor per node, each listing its own node first, then the others
    hosts = cluster.hosts
    executors = [
        ExecutorProcess(
            write_config(tmp_path / f"g{n + 1}", tasks_db, database={"hosts": hosts[n:] + hosts[:n]}),
            tasks_db,
            f"g{n + 1}",
        )
        for n in range(len(hosts))
    ]
    try:
        for executor in executors:
            executor.start()
        assert node_of(tasks_db) == {f"g{n + 1}": hosts[n] for n in range(len(hosts))}
        insert_tasks(tasks_db, TASKS)
        wait_for(
            lambda: db.scalar("SELECT COUNT(*) FROM executions") >= TASKS // 3,
            timeout=60,
            message="a third of the tasks run",
        )
        # When one database node is killed mid-run
        victim = cluster.nodes[KILLED]
        pid = victim.process.pid
        victim.kill()
        with db.connect() as conn, conn.cursor() as cur:
            log_fault(cur, "galera_node", detail=f"node {victim.number} mariadbd pid {pid}")
        # Then its executor moves to the next node in its list
        moved = f"g{KILLED + 1}"
        wait_for(
            lambda: node_of(tasks_db).get(moved) == hosts[(KILLED + 1) % len(hosts)],
            timeout=30,
            message=f"{moved} on the next node",
        )
        # and every task ends terminal, on the surviving nodes
        unfinished = f"SELECT COUNT(*) FROM {TABLE} WHERE status IN ({PENDING:d}, {RUNNING:d})"
        wait_for(
            lambda: not tasks_db.scalar(unfinished), timeout=60, interval=0.5, message="every task terminal"
        )
        assert all(executor.process.poll() is None for executor in executors), "an executor died"
        assert servers_that_ran_after(db, "galera_node") == len(executors), (
            "every executor ran tasks after the node died"
        )
        # and nothing was lost, no attempt ran twice, no task ran twice at once
        assert_all_done_exactly_once(tasks_db, db, TABLE, TASKS)
    finally:
        for executor in executors:
            executor.stop()


def node_of(tasks_db: TestDatabase) -> dict[str, str]:
    return {
        row["server_id"]: row["db_node"] for row in tasks_db.query("SELECT server_id, db_node FROM servers")
    }


def insert_tasks(tasks_db: TestDatabase, count: int) -> None:
    """Mostly instant tasks, some that sleep, so the kill finds handlers running."""
    rows = [
        ("chaos", json.dumps({"kind": "slow", "seconds": 0.3} if n % 10 == 0 else {"kind": "fast"}), 5)
        for n in range(count)
    ]
    with tasks_db.connect() as conn, conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {TABLE} (task_type, task_params, max_retries) VALUES (%s, %s, %s)", rows
        )

"""Test helpers: a per-test database, configs, real executor processes, and
waiting with a deadline instead of fixed sleeps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pymysql

REPO = Path(__file__).resolve().parent.parent
TEST_HANDLERS = REPO / "tests" / "handlers"
DB_HOST, DB_PORT, DB_USER = "127.0.0.1", 3306, "root"

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS executions (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  table_name VARCHAR(100) NOT NULL,
  task_id BIGINT NOT NULL,
  retry_count INT NOT NULL,
  server_id VARCHAR(50) NOT NULL,
  pid INT NOT NULL,
  started_at DATETIME(6) NOT NULL,
  finished_at DATETIME(6) NULL,
  claimed_at DATETIME(3) NULL,
  KEY (table_name, task_id)
)"""


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05, message: str = "condition"
) -> Any:
    """Poll until predicate() is truthy; its value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {value!r})")
        time.sleep(interval)


def servers_that_ran_after(records: TestDatabase, fault_kind: str) -> int:
    """How many servers started a run after the logged fault of that kind."""
    return records.scalar(
        "SELECT COUNT(DISTINCT e.server_id) FROM executions e JOIN chaos_faults f "
        "ON f.kind = %s WHERE e.started_at > f.at",
        (fault_kind,),
    )


def assert_all_done_exactly_once(
    tasks_db: TestDatabase, records: TestDatabase, table: str, tasks: int
) -> None:
    """Every one of `tasks` done, and every invariant of tests/invariants.py
    held over the runs recorded in `records`."""
    from tests.invariants import check

    with tasks_db.connect() as conn, records.connect() as runs:
        report = check(conn, [table], runs)
    assert report.total_tasks == tasks
    assert report.ok, report.text()
    assert report.tasks_by_status[table]["done"] == tasks, report.text()


class RecordingCursor:
    """Stands in for a cursor to capture the SQL a store function builds
    (fetches return nothing), so a test can EXPLAIN exactly that statement."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, args: Any = None) -> None:
        self.statements.append((sql, args))

    def fetchall(self) -> list:
        return []


def running_queue_on(db: TestDatabase, server_ids, queue_name: str) -> bool:
    """Every one of the servers reports the queue among those it runs."""
    rows = db.query("SELECT server_id, queues FROM servers")
    queues = {row["server_id"]: json.loads(row["queues"] or "[]") for row in rows}
    return all(queue_name in queues.get(server, []) for server in server_ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestDatabase:
    """One MariaDB database for one test, with init.sql applied; on the
    machine's MariaDB unless `port` names another (tests.ownmariadb)."""

    __test__ = False

    def __init__(self, name: str | None = None, port: int = DB_PORT):
        self.name = name or f"geventq_test_{uuid.uuid4().hex[:12]}"
        self.port = port

    def connect(self, database: str | None = "") -> pymysql.connections.Connection:
        return pymysql.connect(
            host=DB_HOST,
            port=self.port,
            user=DB_USER,
            password="",
            database=self.name if database == "" else database,
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )

    def create(self, apply_init: bool = True, sample_tasks: bool = False) -> TestDatabase:
        with self.connect(None) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{self.name}`")
        if apply_init:
            from geventq.schema import INIT_SQL, split_statements

            statements = split_statements(INIT_SQL.read_text())
            for statement in statements:
                if sample_tasks or not statement.lstrip().upper().startswith("INSERT INTO"):
                    self.execute(statement)
            self.execute(EXECUTIONS_DDL)
        return self

    def drop(self) -> None:
        with self.connect(None) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")

    def query(self, sql: str, args: Any = None) -> list[dict]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def scalar(self, sql: str, args: Any = None) -> Any:
        rows = self.query(sql, args)
        return next(iter(rows[0].values())) if rows else None

    def execute(self, sql: str, args: Any = None) -> int:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.rowcount

    def add_queue(
        self,
        queue_name: str,
        table_name: str,
        *,
        server_id: str = "",
        max_workers: int = 10,
        scan_interval: int = 1,
        status: int = 1,
        task_timeout: int = 0,
        global_max_workers: int = 0,
        rate_limit: int = 0,
        rate_period: int = 60,
        key_max_workers: int = 0,
    ) -> int:
        if "." not in table_name:
            self.execute(f"CREATE TABLE IF NOT EXISTS `{table_name}` LIKE email_tasks")
            if key_max_workers:
                self.execute(
                    f"ALTER TABLE `{table_name}` ADD COLUMN IF NOT EXISTS concurrency_key VARCHAR(191) NULL, "
                    "ADD KEY IF NOT EXISTS idx_status_key (status, concurrency_key)"
                )
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval, "
                "status, task_timeout, global_max_workers, rate_limit, rate_period, key_max_workers) "
                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                (
                    queue_name,
                    table_name,
                    server_id,
                    max_workers,
                    scan_interval,
                    status,
                    task_timeout,
                    global_max_workers,
                    rate_limit,
                    rate_period,
                    key_max_workers,
                ),
            )
            return cur.lastrowid

    def insert_tasks(
        self,
        table: str,
        task_type: str,
        count: int = 1,
        params: dict | None = None,
        max_retries: int = 3,
        delay_seconds: float = 0,
    ) -> list[int]:
        text = json.dumps(params or {})
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT NOW(3) + INTERVAL %s MICROSECOND AS t", (int(delay_seconds * 1e6),))
            when = cur.fetchone()["t"]
            rows = [(task_type, text, when, max_retries)] * count
            cur.executemany(
                f"INSERT INTO `{table}` (task_type, task_params, schedule_time, max_retries) "
                "VALUES (%s, %s, %s, %s)",
                rows,
            )
            first = cur.lastrowid
            return list(range(first, first + count))

    def status_counts(self, table: str) -> dict[int, int]:
        rows = self.query(f"SELECT status, COUNT(*) AS n FROM `{table}` GROUP BY status")
        return {row["status"]: row["n"] for row in rows}

    def task(self, table: str, task_id: int) -> dict:
        return self.query(f"SELECT * FROM `{table}` WHERE id = %s", (task_id,))[0]


def write_config(directory: Path, db: TestDatabase, **sections: dict) -> Path:
    """A config for tests: fast intervals, test handlers, logs under `directory`."""
    config = {
        # Small pools: the suite runs several executors at once on one MariaDB.
        "database": {"port": db.port, "database": db.name, "read_timeout": 10, "pool_size": 8},
        "executor": {
            "server_id": "server-001",
            "heartbeat_interval": 0.5,
            "heartbeat_timeout": 3,
            "shutdown_timeout": 10,
        },
        "queue": {"config_sync_interval": 0.5, "retry_backoff_base": 0.2, "retry_backoff_max": 2},
        "admin": {"port": 0},
        "handlers": {"paths": [str(TEST_HANDLERS)]},
        "log": {"dir": str(directory / "logs"), "level": "INFO"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"config-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class ExecutorProcess:
    """A real `python -m geventq` process."""

    def __init__(
        self,
        config_path: Path,
        db: TestDatabase,
        server_id: str = "server-001",
        extra_args: list[str] | None = None,
        env: dict | None = None,
    ):
        self.config_path = config_path
        self.db = db
        self.server_id = server_id
        self.args = [
            sys.executable,
            "-m",
            "geventq",
            "--config",
            str(config_path),
            "--server-id",
            server_id,
            *(extra_args or []),
        ]
        self.output_path = config_path.parent / f"executor-{server_id}-{uuid.uuid4().hex[:6]}.out"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> ExecutorProcess:
        self._output = open(self.output_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            self.args, cwd=REPO, stdout=self._output, stderr=subprocess.STDOUT, env=self.env
        )
        if wait:
            self.wait_online()
        return self

    def wait_online(self, timeout: float = 20) -> None:
        def online():
            if self.process.poll() is not None:
                raise AssertionError(f"executor exited with {self.process.returncode}:\n{self.output}")
            try:
                rows = self.db.query("SELECT state, pid FROM servers WHERE server_id = %s", (self.server_id,))
            except pymysql.err.MySQLError:
                return False  # the executor has not created the database yet
            return rows and rows[0]["state"] == "online" and rows[0]["pid"] == self.process.pid

        wait_for(online, timeout, message=f"{self.server_id} online")

    @property
    def admin_url(self) -> str:
        address = self.db.scalar("SELECT admin_address FROM servers WHERE server_id = %s", (self.server_id,))
        return f"http://{address}"

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._output.close()
        return code

    def stop(self) -> None:
        """Best-effort cleanup for fixtures."""
        if self.process and self.process.poll() is None:
            self.terminate()
            try:
                self.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def http(
    method: str, url: str, body: Any = None, headers: dict | None = None, timeout: float = 10
) -> tuple[int, Any]:
    """(status, parsed JSON body or text) for a request; never raises on 4xx/5xx."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")

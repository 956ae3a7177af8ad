"""Every SQL statement geventq runs, one named function each.

Values always travel as PyMySQL parameters. Table names cannot, so each
function that touches a task table takes a `QuotedTable`, which only
`db.quote_table` makes after checking the name. Every function takes a cursor,
so the caller decides what runs in one transaction.

Times are compared with the database clock (NOW(3)), never a worker's, so
servers with skewed clocks agree on what is due and who is alive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from geventq.attempts import Status
from geventq.db import QuotedTable, quote_database

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
STATUS_NAMES = {status: status.label for status in Status}

# Columns a claim hands to the runner: everything JobContext needs, so running
# a task costs no query of its own.
CLAIM_COLUMNS = "id, task_type, task_params, retry_count, max_retries, schedule_time, created_at"


def checked(table: QuotedTable) -> QuotedTable:
    # The one guard that keeps an unchecked identifier out of every statement.
    if not isinstance(table, QuotedTable):
        raise TypeError("table names must come from db.quote_table")
    return table


def micros(seconds: float) -> int:
    """Seconds as whole microseconds: `INTERVAL 1.5 SECOND` rounds to 2 s."""
    return round(seconds * 1_000_000)


# --- schema ------------------------------------------------------------------


def server_version(cur) -> str:
    cur.execute("SELECT VERSION() AS v")
    return cur.fetchone()["v"]


def supports_skip_locked(version: str) -> bool:
    """SKIP LOCKED arrived in MariaDB 10.6 and MySQL 8.0.1."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        return False
    release = tuple(int(part) for part in match.groups())
    return release >= (10, 6, 0) if "mariadb" in version.lower() else release >= (8, 0, 1)


def create_database(cur, name: str) -> None:
    cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_database(name)} DEFAULT CHARACTER SET utf8mb4")


def table_exists(cur, database: str, table: str) -> bool:
    cur.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
        (database, table),
    )
    return cur.fetchone() is not None


def run_script(cur, statements: Iterable[str]) -> None:
    """Apply init.sql, already split into statements by the caller."""
    for statement in statements:
        cur.execute(statement)


@dataclass(frozen=True)
class TaskTableFeatures:
    """The optional columns a task table has, read once per table.

    - `priority` INT: smaller runs first. The claim orders by it when the
      column exists; `priority_index` names the (status, priority,
      schedule_time) index that lets that order walk an index, if there is one.
    - `dedupe_key` VARCHAR(191) NULL, enforced by the database through the
      STORED generated column `dedupe_active` (the key while the task is
      pending or running, NULL otherwise) and a UNIQUE index on it,
      `dedupe_index`. A table with dedupe_key but without that index cannot
      dedupe safely, so it is treated as not having the feature.
    - `concurrency_key` VARCHAR(191) NULL (cluster-wide limits): inserted when given.
    """

    priority: bool = False
    priority_index: str | None = None
    dedupe_key: bool = False
    dedupe_index: str | None = None
    concurrency_key: bool = False

    @property
    def dedupe(self) -> bool:
        return self.dedupe_key and self.dedupe_index is not None


NO_FEATURES = TaskTableFeatures()


def task_table_features(cur, table_name: str) -> TaskTableFeatures:
    """What optional columns and indexes the task table `table` or
    `database.table` has (two reads of information_schema)."""
    schema, _, table = table_name.rpartition(".")
    where = "WHERE table_schema = COALESCE(%s, DATABASE()) AND table_name = %s"
    cur.execute(f"SELECT column_name AS c FROM information_schema.columns {where}", (schema or None, table))
    columns = {row["c"].lower() for row in cur.fetchall()}
    cur.execute(
        "SELECT index_name AS i, seq_in_index AS n, column_name AS c, non_unique AS nu "
        f"FROM information_schema.statistics {where} ORDER BY index_name, seq_in_index",
        (schema or None, table),
    )
    indexes: dict[str, list[str]] = {}
    unique: set[str] = set()
    for row in cur.fetchall():
        indexes.setdefault(row["i"], []).append(row["c"].lower())
        if not int(row["nu"]):
            unique.add(row["i"])
    priority_index = next(
        (name for name, cols in indexes.items() if cols[:3] == ["status", "priority", "schedule_time"]), None
    )
    dedupe_index = next(
        (name for name, cols in indexes.items() if cols == ["dedupe_active"] and name in unique), None
    )
    return TaskTableFeatures(
        priority="priority" in columns,
        priority_index=priority_index if "priority" in columns else None,
        dedupe_key="dedupe_key" in columns,
        dedupe_index=dedupe_index if "dedupe_key" in columns else None,
        concurrency_key="concurrency_key" in columns,
    )


# The two orders a claim takes tasks in; a queue's runner picks one when it
# starts, from its table's columns (TaskTableFeatures). Each matches an index
# whose leading column is status, so the scan walks the index in order.
CLAIM_ORDER = "schedule_time, id"
PRIORITY_CLAIM_ORDER = "priority, schedule_time, id"


def claim_order(features: TaskTableFeatures) -> str:
    return PRIORITY_CLAIM_ORDER if features.priority else CLAIM_ORDER


def table_columns(cur, table: str) -> set[str]:
    """The column names of one of geventq's own tables in the current database."""
    cur.execute(
        "SELECT column_name AS c FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s",
        (table,),
    )
    return {row["c"].lower() for row in cur.fetchall()}


# Columns added to geventq's own tables after the first release: a database
# made by an older init.sql gets them at start-up, with defaults, so nothing
# becomes required. (table, column) -> the statement that adds it.
NEW_COLUMNS: dict[tuple[str, str], str] = {
    (
        "queue_configs",
        "task_timeout",
    ): "ALTER TABLE queue_configs ADD COLUMN task_timeout INT NOT NULL DEFAULT 0",
    (
        "queue_configs",
        "retention_days",
    ): "ALTER TABLE queue_configs ADD COLUMN retention_days INT NOT NULL DEFAULT 0",
}


def add_column(cur, table: str, column: str) -> None:
    cur.execute(NEW_COLUMNS[(table, column)])


# --- queues ------------------------------------------------------------------


def list_queue_configs(cur) -> list[dict[str, Any]]:
    cur.execute("SELECT * FROM queue_configs ORDER BY id")
    return list(cur.fetchall())


# --- servers -----------------------------------------------------------------


def get_server(cur, server_id: str) -> dict[str, Any] | None:
    cur.execute(
        "SELECT *, TIMESTAMPDIFF(MICROSECOND, last_heartbeat, NOW(3)) / 1e6 AS heartbeat_age "
        "FROM servers WHERE server_id = %s",
        (server_id,),
    )
    return cur.fetchone()


def register_server(cur, server_id: str, host: str, pid: int, admin_address: str, version: str) -> None:
    cur.execute(
        "INSERT INTO servers (server_id, host, pid, admin_address, version, started_at, "
        "last_heartbeat, state, queues, running) "
        "VALUES (%(sid)s, %(host)s, %(pid)s, %(admin)s, %(version)s, NOW(3), NOW(3), 'online', '[]', 0) "
        "ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), "
        "admin_address = VALUES(admin_address), version = VALUES(version), started_at = NOW(3), "
        "last_heartbeat = NOW(3), state = 'online', queues = '[]', running = 0",
        {"sid": server_id, "host": host, "pid": pid, "admin": admin_address, "version": version},
    )


def beat(cur, server_id: str, state: str, queues_json: str, running: int) -> int:
    """Renew the heartbeat; 0 rows means the row was deleted under us."""
    cur.execute(
        "UPDATE servers SET last_heartbeat = NOW(3), state = %s, queues = %s, running = %s "
        "WHERE server_id = %s",
        (state, queues_json, running, server_id),
    )
    return cur.rowcount


def mark_server_offline(cur, server_id: str) -> None:
    cur.execute(
        "UPDATE servers SET state = 'offline', running = 0, queues = '[]' WHERE server_id = %s", (server_id,)
    )


def database_now(cur) -> Any:
    cur.execute("SELECT NOW(3) AS now")
    return cur.fetchone()["now"]


# --- claiming ------------------------------------------------------------------


def claim_due_tasks_skip_locked(
    cur, table: QuotedTable, server_id: str, task_types: Sequence[str], limit: int, order: str = CLAIM_ORDER
) -> list[dict]:
    """Lock up to `limit` due tasks and mark them ours, in the caller's
    transaction. The WHERE and ORDER BY match the (status, schedule_time)
    index (InnoDB appends id), so the scan walks the index in order and locks
    only what it returns; SKIP LOCKED steps over rows other servers hold.
    With PRIORITY_CLAIM_ORDER the (status, priority, schedule_time) index
    serves the order the same way (schedule_time <= NOW(3) is then a filter
    on the index entries rather than the range)."""
    cur.execute(
        f"SELECT {CLAIM_COLUMNS}, NOW(3) AS claimed_at FROM {checked(table)} "
        "WHERE status = 0 AND schedule_time <= NOW(3) AND task_type IN %(types)s "
        f"ORDER BY {_order(order)} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        {"types": tuple(task_types), "limit": limit},
    )
    rows = cur.fetchall()
    if rows:
        cur.execute(
            f"UPDATE {table} SET status = 1, server_id = %(sid)s, start_time = NOW(3) WHERE id IN %(ids)s",
            {"sid": server_id, "ids": tuple(row["id"] for row in rows)},
        )
    return list(rows)


def find_due_tasks(
    cur, table: QuotedTable, task_types: Sequence[str], limit: int, order: str = CLAIM_ORDER
) -> list[dict]:
    """Candidates for the conditional-UPDATE claim (servers without SKIP LOCKED)."""
    cur.execute(
        f"SELECT {CLAIM_COLUMNS} FROM {checked(table)} "
        "WHERE status = 0 AND schedule_time <= NOW(3) AND task_type IN %(types)s "
        f"ORDER BY {_order(order)} LIMIT %(limit)s",
        {"types": tuple(task_types), "limit": limit},
    )
    return list(cur.fetchall())


def _order(order: str) -> str:
    # Only the two constants above ever reach the statement.
    if order not in (CLAIM_ORDER, PRIORITY_CLAIM_ORDER):
        raise ValueError(f"not a claim order: {order!r}")
    return order


def seconds_until_next_due(cur, table: QuotedTable, task_types: Sequence[str]) -> float | None:
    """How long until the earliest pending task we could run falls due (None:
    no pending task). MIN over the (status, schedule_time) index reads one
    entry per skipped type, not the table."""
    cur.execute(
        f"SELECT TIMESTAMPDIFF(MICROSECOND, NOW(3), MIN(schedule_time)) / 1e6 AS wait "
        f"FROM {checked(table)} WHERE status = 0 AND task_type IN %(types)s",
        {"types": tuple(task_types)},
    )
    wait = cur.fetchone()["wait"]
    return None if wait is None else float(wait)


def claim_one_if_pending(cur, table: QuotedTable, server_id: str, task_id: int) -> bool:
    """Take one candidate only if nobody took it since we read it."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 1, server_id = %s, start_time = NOW(3) "
        "WHERE id = %s AND status = 0",
        (server_id, task_id),
    )
    return cur.rowcount == 1


# --- outcomes (fenced: status 1, our server_id, the retry_count we claimed) ----

# The fence every outcome write carries: the row is still the attempt we claimed.
FENCED_GROUP = "WHERE id IN %(ids)s AND status = 1 AND server_id = %(sid)s AND retry_count = %(rc)s"
FENCED_ONE = "WHERE id = %(id)s AND status = 1 AND server_id = %(sid)s AND retry_count = %(rc)s"


def finish_tasks(cur, table: QuotedTable, server_id: str, retry_count: int, ids: Sequence[int]) -> int:
    """Mark a group of claimed attempts done; returns how many were still ours."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 2, end_time = NOW(3), error_msg = NULL " + FENCED_GROUP,
        {"ids": tuple(ids), "sid": server_id, "rc": retry_count},
    )
    return cur.rowcount


def retry_task_later(
    cur, table: QuotedTable, server_id: str, task_id: int, retry_count: int, error: str, delay_seconds: float
) -> int:
    cur.execute(
        f"UPDATE {checked(table)} SET status = 0, error_msg = %(err)s, end_time = NULL, "
        "schedule_time = NOW(3) + INTERVAL %(delay)s MICROSECOND, retry_count = retry_count + 1 "
        + FENCED_ONE,
        {"err": error, "delay": micros(delay_seconds), "id": task_id, "sid": server_id, "rc": retry_count},
    )
    return cur.rowcount


def fail_task(cur, table: QuotedTable, server_id: str, task_id: int, retry_count: int, error: str) -> int:
    cur.execute(
        f"UPDATE {checked(table)} SET status = 3, error_msg = %(err)s, end_time = NOW(3) " + FENCED_ONE,
        {"err": error, "id": task_id, "sid": server_id, "rc": retry_count},
    )
    return cur.rowcount


def release_tasks(cur, table: QuotedTable, server_id: str, retry_count: int, ids: Sequence[int]) -> int:
    """Hand unfinished attempts back on shutdown: not counted as an attempt."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 0, start_time = NULL " + FENCED_GROUP,
        {"ids": tuple(ids), "sid": server_id, "rc": retry_count},
    )
    return cur.rowcount


# A lost attempt counts as an attempt: back to pending while retries remain,
# failed once they are exhausted. retry_count is assigned last so every other
# expression reads the value the attempt was claimed with, whichever
# assignment order the server's sql_mode uses.
def _requeue_lost_attempt(error_sql: str = "%(err)s") -> str:
    return (
        "status = IF(retry_count < max_retries, 0, 3), "
        "end_time = IF(retry_count < max_retries, NULL, NOW(3)), "
        f"error_msg = {error_sql}, retry_count = retry_count + 1"
    )


def rescue_decision(cur, heartbeat_timeout: float) -> tuple[Any, list[str]]:
    """The moment a rescue is decided, by the database clock, and the servers
    alive then (not offline, heartbeat within the timeout). One statement, so
    its NOW(3) is taken no later than the snapshot that judged the heartbeats."""
    cur.execute(
        "SELECT NOW(3) AS decided_at, alive.server_id FROM (SELECT 1 AS one) AS moment "
        "LEFT JOIN servers AS alive ON alive.state <> 'offline' "
        "AND alive.last_heartbeat >= NOW(3) - INTERVAL %(timeout)s MICROSECOND",
        {"timeout": micros(heartbeat_timeout)},
    )
    rows = cur.fetchall()
    return rows[0]["decided_at"], [row["server_id"] for row in rows if row["server_id"] is not None]


def rescue_dead_servers_tasks(cur, table: QuotedTable, decided_at: Any, alive: Sequence[str]) -> int:
    """Requeue attempts whose owner was not alive at `decided_at` (see
    rescue_decision), counted as an attempt.

    Only attempts claimed before that moment: this UPDATE can wait on row locks
    (another server's open claim) for as long as they are held, and meanwhile
    an owner judged dead may renew its heartbeat and claim again. A claim made
    after the renewal starts after `decided_at` (the renewal was not in the
    decision's snapshot, so it committed later), and its row is re-read under
    the lock, so the bound on start_time keeps every such claim out. start_time
    is NULL only in rows nobody claimed through geventq: those are orphans."""
    alive_clause = "AND server_id NOT IN %(alive)s " if alive else ""
    cur.execute(
        f"UPDATE {checked(table)} SET "
        + _requeue_lost_attempt(
            "CONCAT('server ', server_id, ' stopped heartbeating while running this attempt')"
        )
        + f" WHERE status = 1 {alive_clause}"
        "AND (start_time IS NULL OR start_time < %(decided)s)",
        {"alive": tuple(alive), "decided": decided_at},
    )
    return cur.rowcount


def recover_own_orphans(cur, table: QuotedTable, server_id: str) -> int:
    """On start-up, before this process claims anything: attempts a previous
    process under our server_id left running. Bounded by this statement's own
    start, like a rescue: should that previous process still be alive after
    all and claim while this waits on a lock, its new claims are left alone."""
    cur.execute(
        f"UPDATE {checked(table)} SET {_requeue_lost_attempt()} WHERE status = 1 AND server_id = %(sid)s "
        "AND (start_time IS NULL OR start_time < NOW(3))",
        {"err": f"server {server_id} restarted while running this attempt", "sid": server_id},
    )
    return cur.rowcount


def find_own_claims(cur, table: QuotedTable, server_id: str, older_than: float) -> list[dict]:
    """Our status-1 rows claimed more than `older_than` seconds ago."""
    cur.execute(
        f"SELECT id, retry_count FROM {checked(table)} WHERE status = 1 AND server_id = %s "
        "AND start_time < NOW(3) - INTERVAL %s MICROSECOND",
        (server_id, micros(older_than)),
    )
    return list(cur.fetchall())


def requeue_unattended_claim(
    cur, table: QuotedTable, server_id: str, task_id: int, retry_count: int, older_than: float
) -> int:
    """A claim whose COMMIT landed but whose reply was lost: nobody runs it.
    Fenced like an outcome, and again on the claim's age: a shutdown hand-back
    keeps retry_count, so only start_time tells a newer claim of the same
    attempt apart from the one that was found unattended."""
    cur.execute(
        f"UPDATE {checked(table)} SET {_requeue_lost_attempt()} "
        + FENCED_ONE
        + " AND start_time < NOW(3) - INTERVAL %(age)s MICROSECOND",
        {
            "err": f"claim by {server_id} was lost before it started",
            "id": task_id,
            "sid": server_id,
            "rc": retry_count,
            "age": micros(older_than),
        },
    )
    return cur.rowcount


# --- named locks ---------------------------------------------------------------


def try_lock(cur, name: str) -> bool:
    """A server-wide named lock held by this connection, without waiting."""
    cur.execute("SELECT GET_LOCK(%s, 0) AS got", (name,))
    return cur.fetchone()["got"] == 1


def release_lock(cur, name: str) -> None:
    cur.execute("SELECT RELEASE_LOCK(%s) AS released", (name,))
    cur.fetchone()


# --- retention -------------------------------------------------------------------


def delete_finished_tasks(cur, table: QuotedTable, older_than_days: int, limit: int) -> int:
    """One small batch of finished tasks past retention. schedule_time is
    never after end_time, so the range on it lets the (status, schedule_time)
    index bound the scan; end_time then decides."""
    cur.execute(
        f"DELETE FROM {checked(table)} WHERE status IN (2, 3, 4) "
        "AND schedule_time < NOW(3) - INTERVAL %(days)s DAY "
        "AND end_time < NOW(3) - INTERVAL %(days)s DAY LIMIT %(limit)s",
        {"days": older_than_days, "limit": limit},
    )
    return cur.rowcount

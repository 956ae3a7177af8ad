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
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from geventq.attempts import Status
from geventq.db import QuotedTable, quote_database, translate
from geventq.errors import RetryableConflict

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
# becomes required. (table, column) -> its definition.
NEW_COLUMNS: dict[tuple[str, str], str] = {
    ("queue_configs", "task_timeout"): "INT NOT NULL DEFAULT 0",
    ("queue_configs", "retention_days"): "INT NOT NULL DEFAULT 0",
    ("queue_configs", "global_max_workers"): "INT NOT NULL DEFAULT 0",
    ("queue_configs", "rate_limit"): "INT NOT NULL DEFAULT 0",
    ("queue_configs", "rate_period"): "INT NOT NULL DEFAULT 60",
    ("queue_configs", "key_max_workers"): "INT NOT NULL DEFAULT 0",
    ("servers", "db_node"): "VARCHAR(255) NOT NULL DEFAULT ''",
}


# Columns whose type a newer release widened: (table, column) -> (the
# information_schema data_type it has now, its definition). Widening keeps
# every value (scan_interval: whole seconds became fractional ones).
WIDENED_COLUMNS: dict[tuple[str, str], tuple[str, str]] = {
    ("queue_configs", "scan_interval"): (
        "double",
        "DOUBLE NOT NULL DEFAULT 5 COMMENT 'seconds, at least 0.05'",
    ),
}


def column_type(cur, table: str, column: str) -> str | None:
    cur.execute(
        "SELECT data_type AS t FROM information_schema.columns "
        "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s",
        (table, column),
    )
    row = cur.fetchone()
    return None if row is None else row["t"].lower()


def widen_column(cur, table: str, column: str) -> None:
    # Both names come from WIDENED_COLUMNS, never from input.
    cur.execute(f"ALTER TABLE {table} MODIFY COLUMN {column} {WIDENED_COLUMNS[(table, column)][1]}")


def add_column(cur, table: str, column: str) -> None:
    # Both names come from NEW_COLUMNS, never from input.
    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {NEW_COLUMNS[(table, column)]}")


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


def server_heartbeats(cur, server_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of these servers with their heartbeat's age by the database
    clock (the supervisor's check on its children)."""
    cur.execute(
        "SELECT server_id, pid, state, TIMESTAMPDIFF(MICROSECOND, last_heartbeat, NOW(3)) / 1e6 "
        "AS heartbeat_age FROM servers WHERE server_id IN %s",
        (tuple(server_ids),),
    )
    return list(cur.fetchall())


def register_server(
    cur, server_id: str, host: str, pid: int, admin_address: str, version: str, db_node: str = ""
) -> None:
    cur.execute(
        "INSERT INTO servers (server_id, host, pid, admin_address, version, started_at, "
        "last_heartbeat, state, queues, running, db_node) "
        "VALUES (%(sid)s, %(host)s, %(pid)s, %(admin)s, %(version)s, NOW(3), NOW(3), 'online', '[]', 0, "
        "%(db_node)s) "
        "ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), "
        "admin_address = VALUES(admin_address), version = VALUES(version), started_at = NOW(3), "
        "last_heartbeat = NOW(3), state = 'online', queues = '[]', running = 0, db_node = VALUES(db_node)",
        {"sid": server_id, "host": host, "pid": pid, "admin": admin_address, "version": version}
        | {"db_node": db_node},
    )


def beat(cur, server_id: str, state: str, queues_json: str, running: int, db_node: str = "") -> int:
    """Renew the heartbeat (and say which database node we use now); 0 rows
    means the row was deleted under us."""
    cur.execute(
        "UPDATE servers SET last_heartbeat = NOW(3), state = %s, queues = %s, running = %s, db_node = %s "
        "WHERE server_id = %s",
        (state, queues_json, running, db_node, server_id),
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


# A queue a handler paused (geventq.RateLimited) starts nothing until then, on
# any server. A plain, non-locking read of one primary key inside the claim's
# own statement: no round trip, and no lock taken on queue_state.
NOT_PAUSED = (
    "AND NOT EXISTS (SELECT 1 FROM queue_state AS pause WHERE pause.queue_name = %(queue)s "
    "AND pause.paused_until > NOW(3)) "
)
DUE = "status = 0 AND schedule_time <= NOW(3) AND task_type IN %(types)s "


def claim_due_tasks_skip_locked(
    cur,
    table: QuotedTable,
    server_id: str,
    task_types: Sequence[str],
    limit: int,
    queue_name: str,
    order: str = CLAIM_ORDER,
) -> list[dict]:
    """Lock up to `limit` due tasks and mark them ours, in the caller's
    transaction. The WHERE and ORDER BY match the (status, schedule_time)
    index (InnoDB appends id), so the scan walks the index in order and locks
    only what it returns; SKIP LOCKED steps over rows other servers hold.
    start_time is the claim's own NOW(3), so it equals the attempt's
    claimed_at (ctx.started_at). With PRIORITY_CLAIM_ORDER the (status,
    priority, schedule_time) index serves the order the same way
    (schedule_time <= NOW(3) is then a filter on the index entries rather
    than the range)."""
    cur.execute(
        f"SELECT {CLAIM_COLUMNS}, NOW(3) AS claimed_at FROM {checked(table)} WHERE {DUE}{NOT_PAUSED}"
        f"ORDER BY {_order(order)} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        {"types": tuple(task_types), "limit": limit, "queue": queue_name},
    )
    return _mark_selected(cur, table, server_id)


def claim_due_tasks_in_share(
    cur,
    table: QuotedTable,
    server_id: str,
    task_types: Sequence[str],
    limit: int,
    queue_name: str,
    share: tuple[int, int],
    order: str = CLAIM_ORDER,
) -> list[dict]:
    """The SKIP LOCKED claim on a Galera cluster, where row locks are local
    to a node: every server first takes due tasks of its own share, the rows
    with CRC32(id) % parts = part (`share` = (part, parts), claims.claim_share),
    so servers on different nodes write different rows and none loses its
    whole claim at COMMIT. CRC32 rather than id % parts: Galera hands out
    auto-increment ids with a step of the cluster's size, so rows inserted
    through one node would all share one remainder. A share that runs short
    is topped up from the other shares' due rows, in claim order: a row of a
    share nobody claims right now still starts (the shares also rotate, see
    claim_share).

    The candidates are read without locks and only then locked by primary
    key: a locking scan of the claim index would also lock the other shares'
    rows it steps over, and a write of another node to any of them aborts
    this transaction (a brute-force abort, 1213)."""
    ids = _share_candidates(cur, table, task_types, limit, queue_name, share, order)
    if not ids:
        return []
    cur.execute(
        f"SELECT {CLAIM_COLUMNS}, NOW(3) AS claimed_at FROM {checked(table)} FORCE INDEX (PRIMARY) "
        f"WHERE id IN %(ids)s AND {DUE}{NOT_PAUSED}ORDER BY {_order(order)} FOR UPDATE SKIP LOCKED",
        {"ids": tuple(ids), "types": tuple(task_types), "queue": queue_name},
    )
    return _mark_selected(cur, table, server_id)


def _share_candidates(
    cur,
    table: QuotedTable,
    task_types: Sequence[str],
    limit: int,
    queue_name: str,
    share: tuple[int, int],
    order: str,
) -> list[int]:
    """Up to `limit` due ids, this share's first, in claim order; no locks."""
    part, parts = share
    args = {"types": tuple(task_types), "limit": limit, "queue": queue_name, "part": part, "parts": parts}
    select = (
        f"SELECT id FROM {checked(table)} WHERE {DUE}{NOT_PAUSED}"
        "AND CRC32(id) %% %(parts)s {test} %(part)s "
        f"ORDER BY {_order(order)} LIMIT %(limit)s"
    )
    cur.execute(select.format(test="="), args)
    ids = [row["id"] for row in cur.fetchall()]
    if len(ids) < limit:
        cur.execute(select.format(test="<>"), args | {"limit": limit - len(ids)})
        ids.extend(row["id"] for row in cur.fetchall())
    return ids


def is_galera(cur) -> bool:
    """True on a node of a Galera cluster (wsrep_on): claims then take shares."""
    cur.execute("SHOW VARIABLES LIKE 'wsrep_on'")
    row = cur.fetchone()
    return row is not None and str(row["Value"]).upper() == "ON"


def live_server_ids(cur, heartbeat_timeout: float) -> list[str]:
    """Every live server, in server_id order: who shares the claims on a cluster."""
    cur.execute(
        "SELECT server_id FROM servers WHERE state <> 'offline' "
        "AND last_heartbeat >= NOW(3) - INTERVAL %s MICROSECOND ORDER BY server_id",
        (micros(heartbeat_timeout),),
    )
    return [row["server_id"] for row in cur.fetchall()]


def _mark_selected(cur, table: QuotedTable, server_id: str) -> list[dict]:
    """The rows the claim's locking SELECT just returned, marked ours."""
    rows = list(cur.fetchall())
    if rows:
        mark_claimed(cur, table, server_id, [row["id"] for row in rows], rows[0]["claimed_at"])
    return rows


def mark_claimed(cur, table: QuotedTable, server_id: str, ids: Sequence[int], claimed_at: Any) -> None:
    """Rows this transaction locked become ours, started at `claimed_at`."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 1, server_id = %(sid)s, start_time = %(at)s "
        "WHERE id IN %(ids)s",
        {"sid": server_id, "at": claimed_at, "ids": tuple(ids)},
    )


def find_due_tasks(
    cur, table: QuotedTable, task_types: Sequence[str], limit: int, queue_name: str, order: str = CLAIM_ORDER
) -> list[dict]:
    """Candidates for the conditional-UPDATE claim (servers without SKIP LOCKED)."""
    cur.execute(
        f"SELECT {CLAIM_COLUMNS} FROM {checked(table)} WHERE {DUE}{NOT_PAUSED}"
        f"ORDER BY {_order(order)} LIMIT %(limit)s",
        {"types": tuple(task_types), "limit": limit, "queue": queue_name},
    )
    return list(cur.fetchall())


def _order(order: str) -> str:
    # Only the two constants above ever reach the statement.
    if order not in (CLAIM_ORDER, PRIORITY_CLAIM_ORDER):
        raise ValueError(f"not a claim order: {order!r}")
    return order


def seconds_until_next_due(
    cur, table: QuotedTable, task_types: Sequence[str], queue_name: str
) -> float | None:
    """How long until the earliest pending task we could run falls due, or
    the queue's pause ends if that is later (None: no pending task). MIN over
    the (status, schedule_time) index reads one entry per skipped type, not
    the table."""
    cur.execute(
        "SELECT TIMESTAMPDIFF(MICROSECOND, NOW(3), GREATEST(MIN(schedule_time), COALESCE("
        "(SELECT paused_until FROM queue_state WHERE queue_name = %(queue)s), MIN(schedule_time)))) "
        f"/ 1e6 AS wait FROM {checked(table)} WHERE status = 0 AND task_type IN %(types)s",
        {"types": tuple(task_types), "queue": queue_name},
    )
    wait = cur.fetchone()["wait"]
    return None if wait is None else float(wait)


# --- claiming under the queue's limits -------------------------------------------
#
# A limited queue's claims take turns: each locks the queue's queue_state row,
# counts what the limits count (running rows, starts in the rate window,
# running rows per key) and claims only what fits, all in one transaction.


def lock_queue_state(cur, queue_name: str) -> dict[str, Any]:
    """Lock the queue's row (creating it the first time); the database
    clock (local and UTC) and the pause, read under the lock."""
    query = (
        "SELECT NOW(3) AS now, UTC_TIMESTAMP(3) AS utc_now, paused_until "
        "FROM queue_state WHERE queue_name = %s FOR UPDATE"
    )
    cur.execute(query, (queue_name,))
    row = cur.fetchone()
    if row is None:
        cur.execute("INSERT IGNORE INTO queue_state (queue_name) VALUES (%s)", (queue_name,))
        cur.execute(query, (queue_name,))
        row = cur.fetchone()
    return row


def count_running(cur, table: QuotedTable) -> int:
    """Running rows of the table, on every server, dead ones included until
    rescued: a range of the (status, schedule_time) index."""
    cur.execute(f"SELECT COUNT(*) AS n FROM {checked(table)} WHERE status = 1")
    return int(cur.fetchone()["n"])


def running_by_key(cur, table: QuotedTable) -> dict[str, int]:
    cur.execute(
        f"SELECT concurrency_key AS k, COUNT(*) AS n FROM {checked(table)} "
        "WHERE status = 1 AND concurrency_key IS NOT NULL GROUP BY concurrency_key"
    )
    return {row["k"]: int(row["n"]) for row in cur.fetchall()}


def rate_window(cur, queue_name: str, window_start: Any) -> tuple[int, Any]:
    """Starts counted in slices that end after `window_start` (UTC), and the
    earliest such slice's end: when it leaves the window, room opens."""
    cur.execute(
        "SELECT COALESCE(SUM(starts), 0) AS used, MIN(slice_end) AS first_end FROM queue_rate_window "
        "WHERE queue_name = %s AND slice_end > %s",
        (queue_name, window_start),
    )
    row = cur.fetchone()
    return int(row["used"]), row["first_end"]


def count_starts(cur, queue_name: str, slice_start: Any, slice_end: Any, starts: int) -> None:
    cur.execute(
        "INSERT INTO queue_rate_window (queue_name, slice_end, slice_start, starts) VALUES (%s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE starts = starts + VALUES(starts)",
        (queue_name, slice_end, slice_start, starts),
    )


def lock_due_candidates(
    cur,
    table: QuotedTable,
    task_types: Sequence[str],
    limit: int,
    *,
    order: str = CLAIM_ORDER,
    with_key: bool = False,
    after: dict[str, Any] | None = None,
    skip_locked: bool = True,
) -> list[dict]:
    """Due tasks in claim order, locked (SKIP LOCKED), optionally after the
    position of a row of the previous batch (`after`): a capped key's tasks
    are stepped over and the next batch read from where the last one ended.
    Each row carries the statement's clock (claimed_at, and claimed_utc for
    the rate window): read after the limits were counted, so a start never
    predates its count."""
    extra = (", concurrency_key" if with_key else "") + (
        ", priority" if order == PRIORITY_CLAIM_ORDER else ""
    )
    # Without SKIP LOCKED (older servers) plain FOR UPDATE: the queue's lock
    # already keeps its other claims out, so only short locks are waited on.
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    args: dict[str, Any] = {"types": tuple(task_types), "limit": limit}
    position = ""
    if after is not None:
        position = "AND (schedule_time > %(at)s OR (schedule_time = %(at)s AND id > %(id)s)) "
        if order == PRIORITY_CLAIM_ORDER:
            position = f"AND (priority > %(pri)s OR (priority = %(pri)s {position[4:-1]})) "
        args.update(at=after["schedule_time"], id=after["id"], pri=after.get("priority"))
    cur.execute(
        f"SELECT {CLAIM_COLUMNS}{extra}, NOW(3) AS claimed_at, UTC_TIMESTAMP(3) AS claimed_utc "
        f"FROM {checked(table)} WHERE {DUE}{position}"
        f"ORDER BY {_order(order)} LIMIT %(limit)s {lock}",
        args,
    )
    return list(cur.fetchall())


def count_due(cur, table: QuotedTable, task_types: Sequence[str], limit: int) -> int:
    """Due tasks, up to `limit`: how many a limit held back (for the gauges)."""
    cur.execute(
        f"SELECT COUNT(*) AS n FROM (SELECT id FROM {checked(table)} WHERE {DUE}LIMIT %(limit)s) AS due",
        {"types": tuple(task_types), "limit": limit},
    )
    return int(cur.fetchone()["n"])


def record_limited_claim(cur, queue_name: str, held: dict[str, int]) -> None:
    """Written by every claim of a limited queue (a Galera cluster certifies
    the lock through this write), with what it held back and why."""
    cur.execute(
        "UPDATE queue_state SET claims = claims + 1, held_global = %(global)s, held_rate = %(rate)s, "
        "held_key = %(key)s, held_paused = %(paused)s, held_at = NOW(3) WHERE queue_name = %(queue)s",
        {
            "queue": queue_name,
            "global": held.get("global", 0),
            "rate": held.get("rate", 0),
            "key": held.get("key", 0),
            "paused": held.get("paused", 0),
        },
    )


def pause_queue(cur, queue_name: str, seconds: float) -> None:
    """A handler said the remote side is rate limiting: no starts for that long, anywhere."""
    cur.execute(
        "INSERT INTO queue_state (queue_name, paused_until) VALUES (%(queue)s, NOW(3) + INTERVAL %(us)s "
        "MICROSECOND) ON DUPLICATE KEY UPDATE paused_until = GREATEST(COALESCE(paused_until, "
        "VALUES(paused_until)), VALUES(paused_until))",
        {"queue": queue_name, "us": micros(seconds)},
    )


def delete_old_rate_slices(cur, periods: dict[str, float]) -> int:
    """Slices no window reaches any more: older than their queue's
    rate_period, and every slice of a queue without a rate limit."""
    deleted = 0
    for queue_name, period in periods.items():
        cur.execute(
            "DELETE FROM queue_rate_window WHERE queue_name = %s "
            "AND slice_end < UTC_TIMESTAMP(3) - INTERVAL %s MICROSECOND",
            (queue_name, micros(period)),
        )
        deleted += cur.rowcount
    others = "WHERE queue_name NOT IN %(limited)s" if periods else ""
    cur.execute(f"DELETE FROM queue_rate_window {others}", {"limited": tuple(periods)})
    return deleted + cur.rowcount


def claim_one_if_pending(cur, table: QuotedTable, server_id: str, task_id: int, claimed_at: Any) -> bool:
    """Take one candidate only if nobody took it since we read it (on a
    Galera cluster another node may have taken it an instant before: a
    conflict, not an error)."""
    try:
        cur.execute(
            f"UPDATE {checked(table)} SET status = 1, server_id = %s, start_time = %s "
            "WHERE id = %s AND status = 0",
            (server_id, claimed_at, task_id),
        )
    except Exception as error:
        if isinstance(translate(error), RetryableConflict):
            return False
        raise
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


def return_rate_limited(
    cur, table: QuotedTable, server_id: str, task_id: int, retry_count: int, error: str, delay_seconds: float
) -> int:
    """The handler raised RateLimited: pending again, due after the delay,
    retry_count unchanged (the attempt is not spent)."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 0, error_msg = %(err)s, start_time = NULL, "
        "schedule_time = NOW(3) + INTERVAL %(delay)s MICROSECOND " + FENCED_ONE,
        {"err": error, "delay": micros(delay_seconds), "id": task_id, "sid": server_id, "rc": retry_count},
    )
    return cur.rowcount


def finish_cancelled(
    cur, table: QuotedTable, table_name: str, server_id: str, task_id: int, retry_count: int, error: str
) -> int:
    """The handler was stopped by a cancel request: cancelled for good, and
    the request is done with."""
    cur.execute(
        f"UPDATE {checked(table)} SET status = 4, error_msg = %(err)s, end_time = NOW(3) " + FENCED_ONE,
        {"err": error, "id": task_id, "sid": server_id, "rc": retry_count},
    )
    changed = cur.rowcount
    cur.execute(
        "DELETE FROM task_cancels WHERE table_name = %s AND task_id = %s AND retry_count = %s",
        (table_name, task_id, retry_count),
    )
    return changed


def _cancel_requested(table: QuotedTable) -> str:
    """True for a row whose running attempt has a cancel request (task_cancels)."""
    return (
        "EXISTS (SELECT 1 FROM task_cancels AS cancel WHERE cancel.table_name = %(tname)s "
        f"AND cancel.task_id = {table}.id AND cancel.retry_count = {table}.retry_count)"
    )


def release_tasks(
    cur, table: QuotedTable, table_name: str, server_id: str, retry_count: int, ids: Sequence[int]
) -> int:
    """Hand unfinished attempts back on shutdown: not counted as an attempt.
    One whose task was cancelled meanwhile ends cancelled instead."""
    cancelled = _cancel_requested(checked(table))
    return _end_counted(
        cur,
        table,
        table_name,
        f"status = IF({cancelled}, 4, 0), end_time = IF({cancelled}, NOW(3), NULL), "
        f"error_msg = IF({cancelled}, 'cancelled by request (stopped by shutdown)', error_msg), "
        "start_time = NULL",
        FENCED_GROUP,
        {"ids": tuple(ids), "sid": server_id, "rc": retry_count, "tname": table_name},
        writer=server_id,
    )


# A lost attempt counts as an attempt: back to pending while retries remain,
# failed once they are exhausted, cancelled when a cancel request for it is
# stored (its owner could not act on it). retry_count is assigned last so
# every other expression reads the value the attempt was claimed with,
# whichever assignment order the server's sql_mode uses. %(tname)s is the
# table's registered name.
def _requeue_lost_attempt(table: QuotedTable, error_sql: str = "%(err)s") -> str:
    cancelled = _cancel_requested(table)
    return (
        f"status = IF({cancelled}, 4, IF(retry_count < max_retries, 0, 3)), "
        f"end_time = IF({cancelled} OR retry_count >= max_retries, NOW(3), NULL), "
        f"error_msg = IF({cancelled}, CONCAT('cancelled by request; ', {error_sql}), {error_sql}), "
        "retry_count = retry_count + 1"
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


def rescue_dead_servers_tasks(
    cur, table: QuotedTable, table_name: str, decided_at: Any, alive: Sequence[str]
) -> int:
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
    return _end_counted(
        cur,
        checked(table),
        table_name,
        _requeue_lost_attempt(
            table, "CONCAT('server ', server_id, ' stopped heartbeating while running this attempt')"
        ),
        f"WHERE status = 1 {alive_clause}AND (start_time IS NULL OR start_time < %(decided)s)",
        {"alive": tuple(alive), "decided": decided_at, "tname": table_name},
    )


def recover_own_orphans(cur, table: QuotedTable, table_name: str, server_id: str) -> int:
    """On start-up, before this process claims anything: attempts a previous
    process under our server_id left running. Bounded by this statement's own
    start, like a rescue: should that previous process still be alive after
    all and claim while this waits on a lock, its new claims are left alone."""
    return _end_counted(
        cur,
        checked(table),
        table_name,
        _requeue_lost_attempt(table),
        "WHERE status = 1 AND server_id = %(sid)s AND (start_time IS NULL OR start_time < NOW(3))",
        {
            "err": f"server {server_id} restarted while running this attempt",
            "sid": server_id,
            "tname": table_name,
        },
        writer=server_id,
    )


def find_own_claims(cur, table: QuotedTable, server_id: str, older_than: float) -> list[dict]:
    """Our status-1 rows claimed more than `older_than` seconds ago."""
    cur.execute(
        f"SELECT id, retry_count FROM {checked(table)} WHERE status = 1 AND server_id = %s "
        "AND start_time < NOW(3) - INTERVAL %s MICROSECOND",
        (server_id, micros(older_than)),
    )
    return list(cur.fetchall())


def requeue_unattended_claim(
    cur,
    table: QuotedTable,
    table_name: str,
    server_id: str,
    task_id: int,
    retry_count: int,
    older_than: float,
) -> int:
    """A claim whose COMMIT landed but whose reply was lost: nobody runs it.
    Fenced like an outcome, and again on the claim's age: a shutdown hand-back
    keeps retry_count, so only start_time tells a newer claim of the same
    attempt apart from the one that was found unattended."""
    return _end_counted(
        cur,
        checked(table),
        table_name,
        _requeue_lost_attempt(table),
        FENCED_ONE + " AND start_time < NOW(3) - INTERVAL %(age)s MICROSECOND",
        {
            "err": f"claim by {server_id} was lost before it started",
            "id": task_id,
            "sid": server_id,
            "rc": retry_count,
            "age": micros(older_than),
            "tname": table_name,
        },
        writer=server_id,
    )


# --- outcome counters (queue_minute_counts) ----------------------------------------
#
# Every statement that ends an attempt adds it to its table's counter row of
# the current minute, in its own transaction: the admin's totals and the
# throughput chart read these, never the finished rows.

OUTCOME_COLUMNS = {DONE: "done", FAILED: "failed", CANCELLED: "cancelled"}
# The row that holds each table's totals from before the minutes kept.
TOTALS_MINUTE = "1000-01-01 00:00:00"


def count_outcomes(cur, table_name: str, writer: str, counts: Mapping[int, int]) -> None:
    """Add outcomes (status -> how many) to this minute's counters of the table."""
    values = [int(counts.get(status, 0)) for status in OUTCOME_COLUMNS]
    if not any(values):
        return
    cur.execute(
        "INSERT INTO queue_minute_counts (table_name, minute, writer, done, failed, cancelled) "
        "VALUES (%s, DATE_FORMAT(NOW(), '%%Y-%%m-%%d %%H:%%i:00'), %s, %s, %s, %s) "
        "ON DUPLICATE KEY UPDATE done = done + VALUES(done), failed = failed + VALUES(failed), "
        "cancelled = cancelled + VALUES(cancelled)",
        (table_name, writer, *values),
    )


def _end_counted(
    cur, table: QuotedTable, table_name: str, assignments: str, where: str, args: dict, writer: str = ""
) -> int:
    """An UPDATE that ends some of its rows (its IF()s decide, row by row):
    the rows are locked first, so the outcomes it wrote are counted among
    exactly those rows afterwards. Run in a transaction; rows changed."""
    cur.execute(f"SELECT id FROM {checked(table)} {where} FOR UPDATE", args)
    locked = tuple(row["id"] for row in cur.fetchall())
    if not locked:
        return 0
    cur.execute(f"UPDATE {table} SET {assignments} {where} AND id IN %(locked)s", {**args, "locked": locked})
    changed = cur.rowcount
    cur.execute(
        f"SELECT status, COUNT(*) AS n FROM {table} WHERE id IN %s AND status IN (2, 3, 4) GROUP BY status",
        (locked,),
    )
    count_outcomes(cur, table_name, writer, {row["status"]: int(row["n"]) for row in cur.fetchall()})
    return changed


def backfill_outcome_counts(cur, table: QuotedTable, table_name: str) -> int:
    """Count the finished rows a table already holds into its totals row
    (once, when the counters begin); how many."""
    cur.execute(
        "SELECT COALESCE(SUM(status = 2), 0) AS done, COALESCE(SUM(status = 3), 0) AS failed, "
        f"COALESCE(SUM(status = 4), 0) AS cancelled FROM {checked(table)} WHERE status IN (2, 3, 4)"
    )
    row = cur.fetchone()
    cur.execute(
        "INSERT INTO queue_minute_counts (table_name, minute, writer, done, failed, cancelled) "
        "VALUES (%s, %s, '', %s, %s, %s) ON DUPLICATE KEY UPDATE done = done + VALUES(done), "
        "failed = failed + VALUES(failed), cancelled = cancelled + VALUES(cancelled)",
        (table_name, TOTALS_MINUTE, row["done"], row["failed"], row["cancelled"]),
    )
    return int(row["done"]) + int(row["failed"]) + int(row["cancelled"])


def fold_old_outcome_counts(cur, keep_minutes: int) -> int:
    """Minutes older than `keep_minutes` added into each table's totals row
    and deleted (nothing writes a minute that old again); rows folded. Run
    in a transaction."""
    old = "minute < NOW() - INTERVAL %(keep)s MINUTE AND minute > %(totals)s"
    args = {"keep": keep_minutes, "totals": TOTALS_MINUTE}
    # Locked first: two servers folding at once take turns, never count twice.
    cur.execute(f"SELECT COUNT(*) AS n FROM queue_minute_counts WHERE {old} FOR UPDATE", args)
    if not cur.fetchone()["n"]:
        return 0
    cur.execute(
        "INSERT INTO queue_minute_counts (table_name, minute, writer, done, failed, cancelled) "
        "SELECT table_name, %(totals)s, '', SUM(done), SUM(failed), SUM(cancelled) "
        f"FROM queue_minute_counts AS minutes WHERE {old} GROUP BY table_name "
        "ON DUPLICATE KEY UPDATE done = queue_minute_counts.done + VALUES(done), "
        "failed = queue_minute_counts.failed + VALUES(failed), "
        "cancelled = queue_minute_counts.cancelled + VALUES(cancelled)",
        args,
    )
    cur.execute(f"DELETE FROM queue_minute_counts WHERE {old}", args)
    return cur.rowcount


# --- cancel requests -------------------------------------------------------------


def cancel_requests_for(cur, server_id: str) -> list[dict[str, Any]]:
    """The cancel requests addressed to one server (its running attempts)."""
    cur.execute(
        "SELECT table_name, task_id, retry_count FROM task_cancels WHERE server_id = %s", (server_id,)
    )
    return list(cur.fetchall())


def tables_with_cancel_requests(cur) -> list[str]:
    cur.execute("SELECT DISTINCT table_name FROM task_cancels")
    return [row["table_name"] for row in cur.fetchall()]


def delete_stale_cancel_requests(cur, table: QuotedTable, table_name: str) -> int:
    """Requests whose attempt is no longer running where it was (it ended,
    or was rescued, before its owner acted): nothing left to cancel."""
    cur.execute(
        f"DELETE cancel FROM task_cancels AS cancel LEFT JOIN {checked(table)} AS task "
        "ON task.id = cancel.task_id AND task.status = 1 AND task.retry_count = cancel.retry_count "
        "AND task.server_id = cancel.server_id WHERE cancel.table_name = %s AND task.id IS NULL",
        (table_name,),
    )
    return cur.rowcount


# --- named locks ---------------------------------------------------------------


def try_named_lock(cur, name: str, holder: str, seconds: float) -> bool:
    """Take the lock `name` for `holder` for `seconds`, unless another holder
    has it and its time has not run out; on an autocommit cursor.

    Not GET_LOCK: on a Galera cluster it is local to one node. The row is
    locked (FOR UPDATE) and written in one short transaction of its own, so
    two takers on one node take turns, and two on different nodes conflict
    at COMMIT: one gets a deadlock error (RetryableConflict, retried by
    Database.call) and then finds the lock held. A lease rather than a lock
    held by an open transaction, because queue changes run DDL, which commits."""
    cur.execute("INSERT IGNORE INTO named_locks (name) VALUES (%s)", (name,))
    cur.execute("START TRANSACTION")
    try:
        cur.execute(
            "SELECT holder <> '' AND expires_at > NOW(3) AS held FROM named_locks WHERE name = %s FOR UPDATE",
            (name,),
        )
        taken = not cur.fetchone()["held"]
        if taken:
            cur.execute(
                "UPDATE named_locks SET holder = %s, expires_at = NOW(3) + INTERVAL %s MICROSECOND "
                "WHERE name = %s",
                (holder, micros(seconds), name),
            )
        cur.execute("COMMIT")
        return taken
    except BaseException:
        # A lock wait timeout leaves the transaction open; a lost connection
        # cannot roll back, and the pool closes it anyway.
        with suppress(Exception):
            cur.connection.rollback()
        raise


def release_named_lock(cur, name: str, holder: str) -> bool:
    """Give the lock up if `holder` still has it (its time may have run out
    and another taken it since); on an autocommit cursor."""
    cur.execute(
        "UPDATE named_locks SET holder = '', expires_at = NULL WHERE name = %s AND holder = %s",
        (name, holder),
    )
    return cur.rowcount == 1


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

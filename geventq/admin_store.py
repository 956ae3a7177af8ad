"""The SQL of the admin API, the status command and the metrics scrape:
queue definitions, task creation and inspection, server listings, reports.
The engine's own statements (claims, outcomes, rescue, heartbeats) are in
store.py; this module builds on its helpers and never runs on the hot path.

Values always travel as parameters; task tables only as `QuotedTable`.
"""

from __future__ import annotations

import operator
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from geventq.db import (
    DRIVER_ERRORS,
    QuotedTable,
    check_table_name,
    duplicate_key,
    missing_table_skipped,
    quote_table,
    table_problem,
)
from geventq.errors import (
    DuplicateKey,
    GeventqError,
    InvalidIdentifier,
    RetryableConflict,
    TaskStateError,
)
from geventq.store import (
    CANCELLED,
    PENDING,
    RUNNING,
    STATUS_NAMES,
    checked,
    count_outcomes,
    list_queue_configs,
    micros,
    release_named_lock,
    try_named_lock,
)

# Queue definitions change under a named lock, so two admins creating or
# renaming queues at once cannot both pass the uniqueness check, and a table
# this call created can be dropped again when the row that was to register it
# fails: nothing is left half written.

QUEUE_ADMIN_LOCK = "geventq_queue_admin"
QUEUE_LOCK_WAIT = 10
# A queue change holds the lock this long at most: a server that died
# holding it blocks queue changes no longer than that.
QUEUE_LOCK_HOLD = 30
QUEUE_COLUMNS = (
    "queue_name",
    "table_name",
    "server_id",
    "max_workers",
    "scan_interval",
    "status",
    "task_timeout",
    "retention_days",
    "global_max_workers",
    "rate_limit",
    "rate_period",
    "key_max_workers",
)
TASK_BASE_COLUMNS = frozenset(
    {
        "id",
        "task_type",
        "task_params",
        "status",
        "schedule_time",
        "start_time",
        "end_time",
        "retry_count",
        "max_retries",
        "error_msg",
        "server_id",
        "created_at",
        "updated_at",
    }
)
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})

# init.sql's email_tasks, the base columns of every task table.
TASK_TABLE_DDL = """CREATE TABLE IF NOT EXISTS {table} (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  task_type     VARCHAR(50)  NOT NULL,
  task_params   MEDIUMTEXT   NULL,
  status        TINYINT      NOT NULL DEFAULT 0 COMMENT '0 pending, 1 running, 2 done, 3 failed, 4 cancelled',
  schedule_time DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  start_time    DATETIME(3)  NULL,
  end_time      DATETIME(3)  NULL,
  retry_count   INT          NOT NULL DEFAULT 0,
  max_retries   INT          NOT NULL DEFAULT 3,
  error_msg     TEXT         NULL,
  server_id     VARCHAR(50)  NOT NULL DEFAULT '',
  created_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  updated_at    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  KEY idx_status_schedule (status, schedule_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""

# Optional task-table columns (store.TaskTableFeatures): what queue/create adds
# for each, before the base index. `dedupe_active` is the key while the task
# is pending or running and NULL otherwise, so the UNIQUE index lets one
# active task hold a key and any number of finished ones keep it.
OPTIONAL_TASK_DDL: dict[str, tuple[str, ...]] = {
    "priority": (
        "priority      INT          NOT NULL DEFAULT 0 COMMENT 'smaller runs first'",
        "KEY idx_status_priority_schedule (status, priority, schedule_time)",
    ),
    "dedupe_key": (
        "dedupe_key    VARCHAR(191) NULL",
        "dedupe_active VARCHAR(191) AS (IF(status IN (0, 1), dedupe_key, NULL)) STORED",
        "UNIQUE KEY uk_dedupe_active (dedupe_active)",
    ),
    # The per-key cap of key_max_workers counts running rows by this key.
    "concurrency_key": (
        "concurrency_key VARCHAR(191) NULL",
        "KEY idx_status_key (status, concurrency_key)",
    ),
}

# A task row as the inserts take it: task_type and task_params (JSON text)
# always; the others may be None (the column's default, or now). A batch's
# statement names only the columns some task of it sets.
TASK_INSERT = "INSERT INTO {table} ({columns}) VALUES "
OPTIONAL_VALUES = ("max_retries", "priority", "dedupe_key", "concurrency_key")
# A dedupe conflict is looked up and retried this often before giving up: the
# task holding the key can finish between the failed insert and the look-up.
DEDUPE_ATTEMPTS = 5


class StatementTooLarge(GeventqError):
    """A batch insert would exceed the server's max_allowed_packet."""


def server_settings(cur) -> dict[str, Any]:
    """What the admin needs to know once: version, time zone offset, packet
    size, and how AUTO_INCREMENT hands out ids (consecutive_id_step)."""
    cur.execute(
        "SELECT VERSION() AS version, @@max_allowed_packet AS max_allowed_packet, "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) AS utc_offset, "
        "@@innodb_autoinc_lock_mode AS autoinc_lock_mode, @@auto_increment_increment AS autoinc_increment"
    )
    settings = cur.fetchone()
    settings["consecutive_id_step"] = consecutive_id_step(settings)
    return settings


def consecutive_id_step(settings: dict[str, Any]) -> int:
    """The step between the ids of one multi-row INSERT when InnoDB
    guarantees them consecutive, else 0. In innodb_autoinc_lock_mode 0 and 1
    an INSERT whose row count is known in advance (a "simple insert", as
    ours are) gets consecutive values, auto_increment_increment apart; in
    mode 2 (MySQL 8's default) inserts may interleave."""
    if settings.get("autoinc_lock_mode") is None or int(settings["autoinc_lock_mode"]) not in (0, 1):
        return 0
    return int(settings.get("autoinc_increment") or 1)


def supports_insert_returning(version: str) -> bool:
    """INSERT … RETURNING arrived in MariaDB 10.5; MySQL has none."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or "mariadb" not in version.lower():
        return False
    return (int(match.group(1)), int(match.group(2))) >= (10, 5)


# --- queues ---


@contextmanager
def _queue_admin_lock(cur) -> Iterator[None]:
    """Queue changes one at a time across the cluster (named_locks, see try_named_lock)."""
    holder = uuid.uuid4().hex
    deadline = time.monotonic() + QUEUE_LOCK_WAIT
    while not try_named_lock(cur, QUEUE_ADMIN_LOCK, holder, QUEUE_LOCK_HOLD):
        if time.monotonic() > deadline:
            raise RetryableConflict("another queue change is in progress; try again")
        time.sleep(0.05)  # gevent's sleep in the executor (monkey-patched)
    try:
        yield
    finally:
        release_named_lock(cur, QUEUE_ADMIN_LOCK, holder)


def get_queue(cur, queue_id: int) -> dict[str, Any] | None:
    cur.execute("SELECT * FROM queue_configs WHERE id = %s", (queue_id,))
    return cur.fetchone()


def create_queue(cur, fields: dict[str, Any]) -> dict[str, Any]:
    """Create the task table when it is missing, then the queue row. Raises
    DuplicateKey naming the field, or InvalidIdentifier for a table that
    cannot hold tasks. Run on an autocommit cursor: DDL commits anyway."""
    columns = [column for column in QUEUE_COLUMNS if column in fields]
    with _queue_admin_lock(cur):
        _check_queue_unique(cur, fields, exclude_id=0)
        created = _ensure_task_table(
            cur,
            fields["table_name"],
            fields.get("columns") or (),
            needs_key=bool(fields.get("key_max_workers")),
        )
        try:
            cur.execute(
                f"INSERT INTO queue_configs ({', '.join(columns)}) "
                f"VALUES ({', '.join(f'%({column})s' for column in columns)})",
                fields,
            )
        except BaseException:
            if created:
                _drop_new_table(cur, fields["table_name"])
            raise
        row = get_queue(cur, cur.lastrowid)
        assert row is not None, "the queue row was just inserted by this connection"
        return row


def update_queue(cur, queue_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change some columns of one queue; None when there is no such queue.
    A new table_name gets its table created when missing, as on create."""
    if not changes or not set(changes) <= set(QUEUE_COLUMNS):
        raise ValueError(f"not queue columns: {sorted(set(changes) - set(QUEUE_COLUMNS))}")
    with _queue_admin_lock(cur):
        row = get_queue(cur, queue_id)
        if row is None:
            return None
        _check_queue_unique(cur, changes, exclude_id=queue_id)
        created = False
        table_name = changes.get("table_name", row["table_name"])
        needs_key = bool(changes.get("key_max_workers", row.get("key_max_workers")))
        if table_name != row["table_name"] or needs_key:
            created = _ensure_task_table(cur, table_name, needs_key=needs_key)
        assignments = ", ".join(f"{column} = %({column})s" for column in QUEUE_COLUMNS if column in changes)
        try:
            cur.execute(
                f"UPDATE queue_configs SET {assignments} WHERE id = %(id)s", {**changes, "id": queue_id}
            )
        except BaseException:
            if created:
                _drop_new_table(cur, table_name)
            raise
        return get_queue(cur, queue_id)


def delete_queue(cur, queue_id: int) -> dict[str, Any] | None:
    """Remove the row (never the task table); the deleted row, or None."""
    with _queue_admin_lock(cur):
        row = get_queue(cur, queue_id)
        if row is not None:
            cur.execute("DELETE FROM queue_configs WHERE id = %s", (queue_id,))
        return row


def _check_queue_unique(cur, fields: dict[str, Any], exclude_id: int) -> None:
    # The unique keys' own collation decides, so 'Mail' clashes with 'mail' here
    # exactly when the INSERT would.
    for column in ("queue_name", "table_name"):
        if column not in fields:
            continue
        cur.execute(
            f"SELECT id, {column} AS value FROM queue_configs WHERE {column} = %s AND id <> %s",
            (fields[column], exclude_id),
        )
        clash = cur.fetchone()
        if clash is not None:
            raise DuplicateKey(
                f"{column}: {fields[column]!r} clashes with queue {clash['id']}'s {column} {clash['value']!r}"
            )


def _split_table(name: str) -> tuple[str | None, str]:
    parts = check_table_name(name)
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _ensure_task_table(cur, name: str, optional: Sequence[str] = (), needs_key: bool = False) -> bool:
    """Create the task table with the base columns (and the `optional` ones,
    and concurrency_key when a per-key cap needs it) unless it exists; an
    existing table must have them. True when this call created it."""
    wanted = [*optional, *(["concurrency_key"] if needs_key and "concurrency_key" not in optional else [])]
    schema, table = _split_table(name)
    if schema is not None:
        if schema.lower() in SYSTEM_SCHEMAS:
            raise InvalidIdentifier(f"table_name: {schema!r} is a system database")
        cur.execute(
            "SELECT schema_name AS s FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        )
        if schema not in {row["s"] for row in cur.fetchall()}:
            raise InvalidIdentifier(f"table_name: database {schema!r} does not exist")
    cur.execute(
        "SELECT table_name AS t, column_name AS c FROM information_schema.columns "
        "WHERE table_schema = COALESCE(%s, DATABASE()) AND table_name = %s",
        (schema, table),
    )
    # information_schema compares without case; table names on disk do not.
    columns = {row["c"].lower() for row in cur.fetchall() if row["t"] == table}
    if columns:
        missing = sorted(TASK_BASE_COLUMNS - columns)
        if missing:
            raise InvalidIdentifier(
                f"table_name: existing table {name!r} lacks the base task columns {', '.join(missing)}"
            )
        lacking = [column for column in wanted if column not in columns]
        if lacking:
            # Adding columns would rebuild a table that may be large and in use:
            # that is the owner's call, so say how instead of doing it.
            how = "; ".join(
                f"ALTER TABLE {quote_table(name, None)} ADD COLUMN {OPTIONAL_TASK_DDL[column][0]}"
                for column in lacking
            )
            field = "columns" if set(lacking) & set(optional) else "key_max_workers"
            raise InvalidIdentifier(
                f"{field}: existing table {name!r} has no {', '.join(lacking)} column; "
                f"add it first (README: {how}, and the index)"
            )
        return False
    cur.execute(task_table_ddl(quote_table(name, None), wanted))
    return True


def task_table_ddl(table: QuotedTable, optional: Sequence[str] = ()) -> str:
    """CREATE TABLE for a task table: the base columns, and the optional ones
    named (keys of OPTIONAL_TASK_DDL) before the base index."""
    ddl = TASK_TABLE_DDL.format(table=table)
    if not optional:
        return ddl
    extra = ",\n".join(f"  {line}" for column in optional for line in OPTIONAL_TASK_DDL[column])
    head, tail = ddl.rsplit("\n) ENGINE", 1)
    return f"{head},\n{extra}\n) ENGINE{tail}"


def _drop_new_table(cur, name: str) -> None:
    """Undo a table this request created, unless something uses it by now."""
    table = quote_table(name, None)
    cur.execute("SELECT COUNT(*) AS n FROM queue_configs WHERE table_name = %s", (name,))
    if cur.fetchone()["n"] == 0:
        cur.execute(f"SELECT COUNT(*) AS n FROM {table}")
        if cur.fetchone()["n"] == 0:
            cur.execute(f"DROP TABLE IF EXISTS {table}")


def queue_overview(cur) -> list[dict[str, Any]]:
    """Every queue row with its task counts by status and the age in seconds
    of its oldest due pending task, by the database clock. Pending and
    running are counted in the task table's (status, schedule_time) index;
    done, failed and cancelled are the outcome counters' totals
    (queue_minute_counts), so finished history is never read."""
    queues = list_queue_configs(cur)
    held = _held_back_by_queue(cur)
    totals = outcome_totals(cur)
    for queue in queues:
        queue["counts"], queue["oldest_pending_age"], queue["table_error"] = None, None, None
        queue["held_back"] = held.get(queue["queue_name"])
        try:
            table = quote_table(queue["table_name"], None)
            counts, queue["oldest_pending_age"] = _active_stats(cur, table)
            queue["counts"] = {**counts, **totals.get(queue["table_name"], dict.fromkeys(OUTCOMES, 0))}
        except InvalidIdentifier as error:
            queue["table_error"] = str(error)
        except DRIVER_ERRORS as error:
            # A missing or malformed task table is reported per queue, never
            # failing the whole listing.
            if table_problem(error) is None:
                raise
            queue["table_error"] = str(error.args[-1])
    return queues


def _held_back_by_queue(cur) -> dict[str, dict[str, Any]]:
    """What the latest claim of each limited (or paused) queue held back, and
    until when a handler paused it."""
    cur.execute(
        "SELECT queue_name, held_global AS global, held_rate AS rate, held_key AS `key`, "
        "held_paused AS paused, held_at, IF(paused_until > NOW(3), paused_until, NULL) AS paused_until "
        "FROM queue_state"
    )
    return {row.pop("queue_name"): row for row in cur.fetchall()}


OUTCOMES = ("done", "failed", "cancelled")


def outcome_totals(cur) -> dict[str, dict[str, int]]:
    """table_name -> outcomes counted so far: a day of minute rows per table
    and writer at most (housekeeping folds older ones into one)."""
    cur.execute(
        "SELECT table_name, SUM(done) AS done, SUM(failed) AS failed, SUM(cancelled) AS cancelled "
        "FROM queue_minute_counts GROUP BY table_name"
    )
    return {row["table_name"]: {name: int(row[name]) for name in OUTCOMES} for row in cur.fetchall()}


def _active_stats(cur, table: QuotedTable) -> tuple[dict[str, int], float | None]:
    # A range of the (status, schedule_time) index, pending and running rows
    # only: counts, and in the pending group the earliest schedule_time that
    # is already due.
    cur.execute(
        "SELECT status, COUNT(*) AS n, TIMESTAMPDIFF(MICROSECOND, "
        "MIN(IF(status = 0 AND schedule_time <= NOW(3), schedule_time, NULL)), NOW(3)) / 1e6 AS oldest "
        f"FROM {checked(table)} WHERE status IN (0, 1) GROUP BY status"
    )
    counts = {STATUS_NAMES[PENDING]: 0, STATUS_NAMES[RUNNING]: 0}
    oldest = None
    for row in cur.fetchall():
        counts[STATUS_NAMES[row["status"]]] = int(row["n"])
        if row["status"] == PENDING and row["oldest"] is not None:
            oldest = max(0.0, float(row["oldest"]))
    return counts, oldest


def finished_per_minute(cur, minutes: int) -> dict[str, Any]:
    """Tasks done and failed per minute over the last `minutes` minutes (the
    current one included), per queue, from the outcome counters; minutes
    without any are 0."""
    tables = {queue["table_name"]: queue["queue_name"] for queue in list_queue_configs(cur)}
    cur.execute("SELECT NOW(3) AS now")
    now = cur.fetchone()["now"].replace(second=0, microsecond=0)
    start = now - timedelta(minutes=minutes - 1)
    keys = [(start + timedelta(minutes=step)).strftime("%Y-%m-%d %H:%M") for step in range(minutes)]
    counted: dict[tuple[str, str], tuple[int, int]] = {}
    if tables:
        cur.execute(
            "SELECT table_name, DATE_FORMAT(minute, '%%Y-%%m-%%d %%H:%%i') AS minute, "
            "SUM(done) AS done, SUM(failed) AS failed FROM queue_minute_counts "
            "WHERE table_name IN %s AND minute >= %s GROUP BY table_name, minute",
            (tuple(tables), start),
        )
        for row in cur.fetchall():
            counted[(tables[row["table_name"]], row["minute"])] = (int(row["done"]), int(row["failed"]))
    series = {
        queue_name: [
            {
                "minute": key,
                "done": counted.get((queue_name, key), (0, 0))[0],
                "failed": counted.get((queue_name, key), (0, 0))[1],
            }
            for key in keys
        ]
        for queue_name in tables.values()
    }
    return {"now": now.strftime("%Y-%m-%d %H:%M"), "minutes": minutes, "queues": series}


# --- servers ---


def list_servers(cur, heartbeat_timeout: float) -> list[dict[str, Any]]:
    """Every server row, with its heartbeat's age and whether it is alive
    (not offline, heartbeat within the timeout), by the database clock."""
    cur.execute(
        "SELECT *, TIMESTAMPDIFF(MICROSECOND, last_heartbeat, NOW(3)) / 1e6 AS heartbeat_age, "
        "(state <> 'offline' AND last_heartbeat >= NOW(3) - INTERVAL %s MICROSECOND) AS alive "
        "FROM servers ORDER BY server_id",
        (micros(heartbeat_timeout),),
    )
    return list(cur.fetchall())


def live_peers(cur, heartbeat_timeout: float, server_id: str) -> list[dict[str, Any]]:
    """The other live servers: where to reach them and the queues they run."""
    cur.execute(
        "SELECT server_id, host, admin_address, queues FROM servers WHERE server_id <> %s "
        "AND state <> 'offline' AND last_heartbeat >= NOW(3) - INTERVAL %s MICROSECOND",
        (server_id, micros(heartbeat_timeout)),
    )
    return list(cur.fetchall())


def is_server_alive(cur, server_id: str, heartbeat_timeout: float) -> dict[str, Any] | None:
    """The server's row when it is alive, else None."""
    cur.execute(
        "SELECT server_id, host, admin_address FROM servers WHERE server_id = %s "
        "AND state <> 'offline' AND last_heartbeat >= NOW(3) - INTERVAL %s MICROSECOND",
        (server_id, micros(heartbeat_timeout)),
    )
    return cur.fetchone()


# --- tasks ---


def _insert_shape(tasks: Sequence[dict[str, Any]]) -> tuple[str, str, list[str]]:
    """(column list, one row's VALUES, the task keys in parameter order) for
    a batch: columns no task of it sets are left to their defaults, so the
    common batch (type and params) sends two parameters per task."""
    present = set().union(*tasks)  # the keys any task has; most batches have only two
    sets = {
        key
        for key in ("schedule_time", "delay", *OPTIONAL_VALUES)
        if key in present and any(task.get(key) is not None for task in tasks)
    }
    columns, values, keys = ["task_type", "task_params"], ["%s", "%s"], ["task_type", "task_params"]
    # schedule_time always: it is due now by the database clock when no task
    # says otherwise (a user-made table may give the column no default).
    # `delay` is microseconds from now, `schedule_time` a database time.
    columns.append("schedule_time")
    if "schedule_time" in sets and "delay" in sets:
        values.append("COALESCE(%s, NOW(3) + INTERVAL COALESCE(%s, 0) MICROSECOND)")
        keys += ["schedule_time", "delay"]
    elif "schedule_time" in sets:
        values.append("COALESCE(%s, NOW(3))")
        keys.append("schedule_time")
    elif "delay" in sets:
        values.append("NOW(3) + INTERVAL COALESCE(%s, 0) MICROSECOND")
        keys.append("delay")
    else:
        values.append("NOW(3)")
    for key in OPTIONAL_VALUES:
        if key in sets:
            columns.append(key)
            # DEFAULT(column): the table's own default where a task leaves it out
            values.append("%s" if key.endswith("_key") else f"COALESCE(%s, DEFAULT({key}))")
            keys.append(key)
    return ", ".join(columns), f"({', '.join(values)})", keys


def insert_task(cur, table: QuotedTable, task: dict[str, Any]) -> int:
    """One task; schedule_time None means now by the database clock."""
    columns, values, keys = _insert_shape([task])
    cur.execute(
        TASK_INSERT.format(table=checked(table), columns=columns) + values, [task.get(k) for k in keys]
    )
    return cur.lastrowid


def insert_task_deduped(cur, table: QuotedTable, task: dict[str, Any], dedupe_index: str) -> tuple[int, bool]:
    """One task with a dedupe_key, on a table whose UNIQUE `dedupe_index`
    enforces it: (its id, False), or (the id of the pending or running task
    that holds the key, True). The database decides, never a look-up first."""
    for _ in range(DEDUPE_ATTEMPTS):
        try:
            return insert_task(cur, table, task), False
        except DRIVER_ERRORS as error:
            if duplicate_key(error) != dedupe_index:
                raise
        # A locking read sees the latest committed row even in a snapshot transaction.
        cur.execute(
            f"SELECT id FROM {table} WHERE dedupe_active = %s LOCK IN SHARE MODE", (task["dedupe_key"],)
        )
        row = cur.fetchone()
        if row is not None:
            return row["id"], True
        # The holder finished between the insert and the look-up: insert again.
    raise RetryableConflict(
        f"dedupe_key: {task['dedupe_key']!r} changed hands {DEDUPE_ATTEMPTS} times; try again"
    )


def insert_tasks(
    cur,
    table: QuotedTable,
    tasks: Sequence[dict[str, Any]],
    returning: bool,
    max_statement: int,
    id_step: int = 0,
) -> list[int]:
    """Insert every task in one multi-row statement, all or nothing, and
    return their ids in order.

    The ids: with `id_step` (consecutive_id_step: InnoDB guarantees them
    consecutive) they follow from the first, LAST_INSERT_ID(), with nothing
    read back: reading 10,000 ids costs more than the insert. Otherwise with
    RETURNING (MariaDB 10.5+) the statement says them. Without
    it, consecutive ids are guaranteed only in innodb_autoinc_lock_mode 0 or
    1, so instead the caller runs this in a snapshot transaction
    (`db.call(..., snapshot=True)`): rows others committed before it began
    have smaller ids, rows they commit later are invisible, so the ids from
    the first one up are ours."""
    columns, values, keys = _insert_shape(tasks)
    rows = ", ".join([values] * len(tasks))
    try:
        pick = operator.itemgetter(*keys)  # a batch where every task has every key (the Client's)
        args = [value for task in tasks for value in pick(task)]
    except KeyError:
        args = [task.get(key) for task in tasks for key in keys]
    statement = cur.mogrify(TASK_INSERT.format(table=checked(table), columns=columns) + rows, args)
    if (
        len(statement) > max_statement // 4
        and len(statement.encode("utf-8", "surrogatepass")) > max_statement
    ):
        raise StatementTooLarge(
            f"the batch needs a statement of {len(statement):,} bytes, more "
            f"than the database's max_allowed_packet ({max_statement:,})"
        )
    if id_step:
        cur.execute(statement)
        first = cur.lastrowid
        return list(range(first, first + id_step * len(tasks), id_step))
    if returning:
        cur.execute(statement + " RETURNING id")
        return [row["id"] for row in cur.fetchall()]
    cur.execute(statement)
    cur.execute(f"SELECT id FROM {table} WHERE id >= %s ORDER BY id LIMIT %s", (cur.lastrowid, len(tasks)))
    return [row["id"] for row in cur.fetchall()]


def insert_tasks_deduped(
    cur,
    table: QuotedTable,
    tasks: Sequence[dict[str, Any]],
    returning: bool,
    max_statement: int,
    dedupe_index: str,
    id_step: int = 0,
) -> tuple[list[int], set[int]]:
    """insert_tasks on a table with dedupe: (ids in order, the positions
    whose id is an existing task's). One statement while no key clashes;
    when one does (the failed statement is rolled back alone), the tasks
    without a key go in one statement and those with one row by row."""
    try:
        return insert_tasks(cur, table, tasks, returning, max_statement, id_step), set()
    except DRIVER_ERRORS as error:
        if duplicate_key(error) != dedupe_index:
            raise
    ids: list[int] = [0] * len(tasks)
    duplicates: set[int] = set()
    plain = [index for index, task in enumerate(tasks) if task.get("dedupe_key") is None]
    if plain:
        for index, task_id in zip(
            plain,
            insert_tasks(cur, table, [tasks[i] for i in plain], returning, max_statement, id_step),
            strict=True,
        ):
            ids[index] = task_id
    for index, task in enumerate(tasks):
        if task.get("dedupe_key") is not None:
            ids[index], duplicate = insert_task_deduped(cur, table, task, dedupe_index)
            if duplicate:
                duplicates.add(index)
    return ids, duplicates


def list_tasks(
    cur, table: QuotedTable, status: int | None, task_type: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Newest first; one row more than `limit` tells the caller a next page
    exists. `offset` is a page cursor (see page_cursor) when negative: the
    tasks older than id -offset, walked down the primary key from there, so
    a deep page costs what the first does. A non-negative offset skips that
    many rows (the old way, which reads every row it skips)."""
    where: list[str] = []
    args: list[Any] = []
    if status is not None:
        where.append("status = %s")
        args.append(status)
    if task_type is not None:
        where.append("task_type = %s")
        args.append(task_type)
    if offset < 0:
        where.append("id < %s")
        args.append(-offset)
    condition = f"WHERE {' AND '.join(where)} " if where else ""
    cur.execute(
        f"SELECT * FROM {checked(table)} {condition}ORDER BY id DESC LIMIT %s OFFSET %s",
        (*args, limit + 1, max(offset, 0)),
    )
    return list(cur.fetchall())


def page_cursor(rows: Sequence[dict[str, Any]], limit: int) -> int | None:
    """task/list's next_offset: minus the last id shown, None on the last page."""
    return -int(rows[limit - 1]["id"]) if len(rows) > limit else None


def get_task(cur, table: QuotedTable, task_id: int) -> dict[str, Any] | None:
    cur.execute(f"SELECT * FROM {checked(table)} WHERE id = %s", (task_id,))
    return cur.fetchone()


RETRY_SET = (
    "SET status = 0, retry_count = 0, error_msg = NULL, schedule_time = NOW(3), "
    "start_time = NULL, end_time = NULL"
)


def retry_task(
    cur, table: QuotedTable, task_id: int, dedupe_index: str | None = None
) -> tuple[bool, dict[str, Any] | None]:
    """Failed or cancelled back to pending, due now, with a fresh retry budget.
    (changed, row after); row None when there is no such task. Raises
    TaskStateError when its dedupe_key is held by another active task."""
    try:
        cur.execute(f"UPDATE {checked(table)} {RETRY_SET} WHERE id = %s AND status IN (3, 4)", (task_id,))
    except DRIVER_ERRORS as error:
        if dedupe_index is None or duplicate_key(error) != dedupe_index:
            raise
        row = get_task(cur, table, task_id) or {}
        raise TaskStateError(
            f"id: task {task_id} has dedupe_key {row.get('dedupe_key')!r}, which a pending or running "
            "task holds; it can be retried once that one has finished"
        ) from None
    return cur.rowcount == 1, get_task(cur, table, task_id)


def count_tasks(cur, table: QuotedTable, status: int, task_type: str | None) -> int:
    """How many tasks are in `status` (of `task_type`, if given)."""
    extra, args = ("AND task_type = %s", (status, task_type)) if task_type else ("", (status,))
    cur.execute(f"SELECT COUNT(*) AS n FROM {checked(table)} WHERE status = %s {extra}", args)
    return int(cur.fetchone()["n"])


def task_ids_in_status(
    cur, table: QuotedTable, status: int, task_type: str | None, after_id: int, limit: int
) -> list[int]:
    """The next `limit` ids above `after_id` in `status`: keyset pages for bulk actions."""
    extra, args = ("AND task_type = %s", [task_type]) if task_type else ("", [])
    cur.execute(
        f"SELECT id FROM {checked(table)} WHERE status = %s AND id > %s {extra} ORDER BY id LIMIT %s",
        (status, after_id, *args, limit),
    )
    return [row["id"] for row in cur.fetchall()]


def retry_tasks(
    cur, table: QuotedTable, ids: Sequence[int], status: int, dedupe_index: str | None = None
) -> tuple[int, int]:
    """Tasks of `ids` still in `status` (failed or cancelled) back to pending,
    as retry_task: (retried, skipped because another active task holds
    their dedupe_key). One statement unless a key clashes; then row by row."""
    try:
        cur.execute(
            f"UPDATE {checked(table)} {RETRY_SET} WHERE id IN %s AND status = %s", (tuple(ids), status)
        )
        return cur.rowcount, 0
    except DRIVER_ERRORS as error:
        if dedupe_index is None or duplicate_key(error) != dedupe_index:
            raise
    retried = skipped = 0
    for task_id in ids:
        try:
            cur.execute(f"UPDATE {table} {RETRY_SET} WHERE id = %s AND status = %s", (task_id, status))
            retried += cur.rowcount
        except DRIVER_ERRORS as error:
            if duplicate_key(error) != dedupe_index:
                raise
            skipped += 1
    return retried, skipped


def cancel_task(cur, table: QuotedTable, table_name: str, task_id: int) -> tuple[str, dict[str, Any] | None]:
    """In one transaction, with the task's row locked: a pending task is
    cancelled; for a running one a cancel request is stored for its owner
    (and for the rescue, should the owner die first). Returns what was done,
    "cancelled", "requested" or "" (nothing: done, failed or cancelled
    already), and the row after; row None when there is no such task."""
    cur.execute(f"SELECT status FROM {checked(table)} WHERE id = %s FOR UPDATE", (task_id,))
    found = cur.fetchone()
    done = ""
    if found is not None and found["status"] == 0:
        cur.execute(
            f"UPDATE {table} SET status = 4, end_time = NOW(3) WHERE id = %s",
            (task_id,),
        )
        count_outcomes(cur, table_name, "", {CANCELLED: 1})
        done = "cancelled"
    elif found is not None and found["status"] == 1:
        cur.execute(
            f"INSERT INTO task_cancels (table_name, task_id, retry_count, server_id) "
            f"SELECT %s, id, retry_count, server_id FROM {table} WHERE id = %s "
            "ON DUPLICATE KEY UPDATE retry_count = VALUES(retry_count), server_id = VALUES(server_id), "
            "requested_at = NOW(3)",
            (table_name, task_id),
        )
        done = "requested"
    return done, get_task(cur, table, task_id)


# --- schedules ---
#
# The schedules feature (DESIGN, Recurring tasks) owns the `schedules` table;
# the command line only reads it, and only where it exists.


def list_schedules(cur) -> list[dict[str, Any]] | None:
    """Every schedule row by name; None when this database has no schedules table."""
    cur.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'schedules'"
    )
    if cur.fetchone() is None:
        return None
    cur.execute("SELECT * FROM schedules ORDER BY name")
    return list(cur.fetchall())


# --- status ---
#
# What the status command and the metrics scrape read beyond the admin
# section: the due pending tasks of every queue, for the gauges /metrics
# reads at scrape time (never on the hot path).


def due_pending_by_queue(cur, queues: list[dict[str, Any]]) -> dict[str, tuple[int, float | None]]:
    """queue_name -> (pending tasks already due, age in seconds of the oldest
    of them by the database clock), for each queue_configs row given whose
    table can be read; a missing or malformed table leaves its queue out."""
    due: dict[str, tuple[int, float | None]] = {}
    for queue in queues:
        with missing_table_skipped():
            due[queue["queue_name"]] = _due_pending(cur, quote_table(queue["table_name"], None))
    return due


def _due_pending(cur, table: QuotedTable) -> tuple[int, float | None]:
    # One range scan of the (status, schedule_time) index: status = 0 and
    # due by now. MIN(schedule_time) is its first entry.
    cur.execute(
        "SELECT COUNT(*) AS n, TIMESTAMPDIFF(MICROSECOND, MIN(schedule_time), NOW(3)) / 1e6 AS oldest "
        f"FROM {checked(table)} WHERE status = 0 AND schedule_time <= NOW(3)"
    )
    row = cur.fetchone()
    oldest = None if row["oldest"] is None else max(0.0, float(row["oldest"]))
    return int(row["n"]), oldest

"""Every SQL statement about schedules, one named function each: what the
firing loop runs (find and lock a due schedule, write its fires) and what the
admin API, the status command and the metrics read and change.

Schedule times (next_fire_at, last_fire_at, the ledger's fire_at) are UTC and
compared with UTC_TIMESTAMP(3), the database clock in UTC, never NOW(): the
database's own time zone may observe daylight saving. A task's schedule_time
stays NOW(3), like every other task's, so claims see it due at once.

Values always travel as parameters; task tables only as `QuotedTable`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from geventq.db import QuotedTable, missing_table_skipped, quote_table
from geventq.store import checked

# The columns a request may set; the rest are the engine's.
SCHEDULE_COLUMNS = (
    "name",
    "queue_name",
    "task_type",
    "task_params",
    "max_retries",
    "cron",
    "interval_seconds",
    "timezone",
    "misfire_policy",
    "misfire_grace_seconds",
    "max_catchup",
    "overlap",
    "status",
)
ENQUEUED = "enqueued"


def _not_parked(parked: Collection[int]) -> tuple[str, dict[str, Any]]:
    """A condition leaving out the schedules this server set aside for now."""
    if not parked:
        return "", {}
    return "AND id NOT IN %(parked)s ", {"parked": tuple(parked)}


# --- the firing loop ------------------------------------------------------------------


def utc_now(cur) -> datetime:
    cur.execute("SELECT UTC_TIMESTAMP(3) AS now")
    return cur.fetchone()["now"]


def peek(cur, parked: Collection[int]) -> tuple[float | None, int]:
    """(seconds until the earliest enabled schedule is due, negative when it
    is; None when none is), and how many enabled schedules have no
    next_fire_at yet (added by SQL). One range of the (status, next_fire_at) index."""
    condition, args = _not_parked(parked)
    cur.execute(
        "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(3), MIN(next_fire_at)) / 1e6 AS wait, "
        f"COUNT(*) - COUNT(next_fire_at) AS unstarted FROM schedules WHERE status = 1 {condition}",
        args,
    )
    row = cur.fetchone()
    return (None if row["wait"] is None else float(row["wait"])), int(row["unstarted"] or 0)


def unstarted_schedules(cur, parked: Collection[int]) -> list[dict[str, Any]]:
    """Enabled schedules without a next_fire_at, and the database's UTC time."""
    condition, args = _not_parked(parked)
    cur.execute(
        "SELECT id, name, cron, interval_seconds, timezone, UTC_TIMESTAMP(3) AS now FROM schedules "
        f"WHERE status = 1 AND next_fire_at IS NULL {condition}LIMIT 100",
        args,
    )
    return list(cur.fetchall())


def start_schedule(cur, schedule_id: int, next_fire_at: datetime) -> int:
    """Give an unstarted schedule its first fire; 0 when someone else did."""
    cur.execute(
        "UPDATE schedules SET next_fire_at = %s WHERE id = %s AND status = 1 AND next_fire_at IS NULL",
        (next_fire_at, schedule_id),
    )
    return cur.rowcount


# A due schedule row, with the database's UTC time it was judged due by.
_DUE = (
    "SELECT *, UTC_TIMESTAMP(3) AS now FROM schedules "
    "WHERE status = 1 AND next_fire_at <= UTC_TIMESTAMP(3) {condition}"
    "ORDER BY next_fire_at, id LIMIT 1"
)


def lock_due_schedule(cur, parked: Collection[int]) -> dict[str, Any] | None:
    """The earliest due schedule, locked until the caller's transaction ends.
    SKIP LOCKED steps over one another server is firing right now: that
    server moves it on, and the next read sees it no longer due."""
    condition, args = _not_parked(parked)
    cur.execute(_DUE.format(condition=condition) + " FOR UPDATE SKIP LOCKED", args)
    return cur.fetchone()


def find_due_schedule(cur, parked: Collection[int]) -> dict[str, Any] | None:
    """The earliest due schedule, unlocked (servers without SKIP LOCKED):
    `lock_if_unchanged` then decides who fires it."""
    condition, args = _not_parked(parked)
    cur.execute(_DUE.format(condition=condition), args)
    return cur.fetchone()


def lock_if_unchanged(cur, schedule_id: int, next_fire_at: datetime) -> bool:
    """Compare-and-set: lock the row only if it still waits for the fire we
    read. A server firing it first holds the lock; once it commits, this
    re-reads the row (READ COMMITTED), finds next_fire_at moved on and
    matches nothing. Changes no value (FOUND_ROWS counts the match)."""
    cur.execute(
        "UPDATE schedules SET next_fire_at = next_fire_at WHERE id = %s AND status = 1 AND next_fire_at = %s",
        (schedule_id, next_fire_at),
    )
    return cur.rowcount == 1


def queue_table(cur, queue_name: str) -> str | None:
    """The table_name of the schedule's target queue, if the queue exists."""
    cur.execute("SELECT table_name FROM queue_configs WHERE queue_name = %s", (queue_name,))
    row = cur.fetchone()
    return None if row is None else row["table_name"]


def last_fire_table(cur, schedule_id: int) -> str | None:
    """The table the schedule's latest fire wrote to: where its tasks go
    while its queue is missing (deleted or renamed; the table stays)."""
    cur.execute(
        "SELECT task_table FROM schedule_fires WHERE schedule_id = %s ORDER BY fire_at DESC LIMIT 1",
        (schedule_id,),
    )
    row = cur.fetchone()
    return None if row is None else row["task_table"]


def recorded_fires(cur, schedule_id: int, fire_times: Sequence[datetime]) -> set[datetime]:
    """Which of these fire times the ledger already has (a next_fire_at set
    back by hand names fires that happened): they are not fired again."""
    if not fire_times:
        return set()
    cur.execute(
        "SELECT fire_at FROM schedule_fires WHERE schedule_id = %s AND fire_at IN %s",
        (schedule_id, tuple(fire_times)),
    )
    return {row["fire_at"] for row in cur.fetchall()}


def previous_task(cur, schedule_id: int) -> tuple[str, int] | None:
    """(table, id) of the newest task the schedule created, scheduled or run
    by hand: the PRIMARY KEY read backwards, stopping at the first enqueued row."""
    cur.execute(
        "SELECT task_table, task_id FROM schedule_fires WHERE schedule_id = %s AND outcome = 'enqueued' "
        "ORDER BY fire_at DESC LIMIT 1",
        (schedule_id,),
    )
    row = cur.fetchone()
    return None if row is None or row["task_id"] is None else (row["task_table"], int(row["task_id"]))


def task_status(cur, table_name: str, task_id: int) -> int | None:
    """A task's status; None when the task, or its table, is gone."""
    with missing_table_skipped():
        table = quote_table(table_name, None)
        cur.execute(f"SELECT status FROM {checked(table)} WHERE id = %s", (task_id,))
        row = cur.fetchone()
        return None if row is None else int(row["status"])
    return None


def insert_scheduled_task(cur, table: QuotedTable, task_type: str, task_params: str, max_retries: int) -> int:
    """The fire's task, due at once by the database clock."""
    cur.execute(
        f"INSERT INTO {checked(table)} (task_type, task_params, schedule_time, max_retries) "
        "VALUES (%s, %s, NOW(3), %s)",
        (task_type, task_params, max_retries),
    )
    return cur.lastrowid


def record_fire(
    cur, schedule_id: int, fire_at: datetime, task_table: str, task_id: int | None, outcome: str
) -> None:
    """The ledger row. A second row for the same (schedule, fire time) is a
    DuplicateKey: the fire happened already, and the transaction rolls back."""
    cur.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, task_table, task_id, outcome) "
        "VALUES (%s, %s, %s, %s, %s)",
        (schedule_id, fire_at, task_table, task_id, outcome),
    )


def advance_schedule(
    cur, schedule_id: int, next_fire_at: datetime, last_fire_at: datetime | None, last_task_id: int | None
) -> None:
    cur.execute(
        "UPDATE schedules SET next_fire_at = %s, last_fire_at = %s, last_task_id = %s WHERE id = %s",
        (next_fire_at, last_fire_at, last_task_id, schedule_id),
    )


# --- housekeeping ------------------------------------------------------------------------


def schedules_for_pruning(cur, days: int) -> tuple[list[dict[str, Any]], datetime]:
    """Each schedule's id and latest scheduled fire, and the cut-off: UTC now − days."""
    cur.execute("SELECT id, last_fire_at FROM schedules")
    rows = list(cur.fetchall())
    cur.execute("SELECT UTC_TIMESTAMP(3) - INTERVAL %s DAY AS cutoff", (days,))
    return rows, cur.fetchone()["cutoff"]


def prune_fires(cur, schedule_id: int, before: datetime, keep: datetime | None, limit: int) -> int:
    """One small batch of a schedule's ledger rows older than `before` (a
    range of the primary key), but the fire at `keep`."""
    cur.execute(
        "DELETE FROM schedule_fires WHERE schedule_id = %s AND fire_at < %s AND NOT fire_at <=> %s LIMIT %s",
        (schedule_id, before, keep, limit),
    )
    return cur.rowcount


def prune_orphan_fires(cur, before: datetime, limit: int) -> int:
    """One batch of old ledger rows of deleted schedules."""
    cur.execute(
        "DELETE FROM schedule_fires WHERE fire_at < %s "
        "AND schedule_id NOT IN (SELECT id FROM schedules) LIMIT %s",
        (before, limit),
    )
    return cur.rowcount


# --- the admin API, the status command, the metrics ------------------------------------


def list_schedules(cur) -> list[dict[str, Any]]:
    """Every schedule, with the table of its last fire's task (last_task_table)."""
    cur.execute(
        "SELECT s.*, f.task_table AS last_task_table FROM schedules AS s "
        "LEFT JOIN schedule_fires AS f ON f.schedule_id = s.id AND f.fire_at = s.last_fire_at "
        "ORDER BY s.name"
    )
    return list(cur.fetchall())


def get_schedule(cur, schedule_id: int, lock: bool = False) -> dict[str, Any] | None:
    cur.execute(
        "SELECT s.*, f.task_table AS last_task_table FROM schedules AS s "
        "LEFT JOIN schedule_fires AS f ON f.schedule_id = s.id AND f.fire_at = s.last_fire_at "
        "WHERE s.id = %s" + (" FOR UPDATE" if lock else ""),
        (schedule_id,),
    )
    return cur.fetchone()


def schedule_by_name(cur, name: str) -> dict[str, Any] | None:
    cur.execute("SELECT id, name FROM schedules WHERE name = %s", (name,))
    return cur.fetchone()


def queue_exists(cur, queue_name: str) -> bool:
    cur.execute("SELECT 1 FROM queue_configs WHERE queue_name = %s", (queue_name,))
    return cur.fetchone() is not None


def create_schedule(
    cur, fields: dict[str, Any], first_fire: Callable[[datetime], datetime]
) -> dict[str, Any]:
    """Insert a schedule starting at first_fire(now); run in a transaction."""
    columns = [column for column in SCHEDULE_COLUMNS if column in fields]
    values = {**fields, "next_fire_at": first_fire(utc_now(cur))}
    cur.execute(
        f"INSERT INTO schedules ({', '.join(columns)}, next_fire_at) "
        f"VALUES ({', '.join(f'%({column})s' for column in columns)}, %(next_fire_at)s)",
        values,
    )
    row = get_schedule(cur, cur.lastrowid)
    assert row is not None, "the schedule row was just inserted by this transaction"
    return row


def update_schedule(
    cur,
    schedule_id: int,
    changes: Callable[[dict[str, Any]], dict[str, Any]],
    first_fire: Callable[[dict[str, Any], datetime], datetime],
) -> dict[str, Any] | None:
    """Change a schedule (locked while it changes) and restart it at the
    first fire after now. `changes(row)` gives the columns to set, checked
    against the row as it is; `first_fire(row after, now)` its next fire.
    None when there is no such schedule. Run in a transaction."""
    row = get_schedule(cur, schedule_id, lock=True)
    if row is None:
        return None
    assignments = changes(row)
    unknown = set(assignments) - set(SCHEDULE_COLUMNS)
    if unknown:
        raise ValueError(f"not schedule columns: {sorted(unknown)}")
    updated = {**row, **assignments}
    assignments["next_fire_at"] = first_fire(updated, utc_now(cur))
    cur.execute(
        f"UPDATE schedules SET {', '.join(f'{column} = %({column})s' for column in assignments)} "
        "WHERE id = %(id)s",
        {**assignments, "id": schedule_id},
    )
    return get_schedule(cur, schedule_id)


def delete_schedule(cur, schedule_id: int) -> dict[str, Any] | None:
    """Remove the schedule (its fire history stays in the ledger); the
    deleted row, or None. Waits for a fire in progress to commit."""
    row = get_schedule(cur, schedule_id, lock=True)
    if row is not None:
        cur.execute("DELETE FROM schedules WHERE id = %s", (schedule_id,))
    return row


def list_fires(cur, schedule_id: int, limit: int) -> list[dict[str, Any]]:
    """The schedule's ledger, newest first."""
    cur.execute(
        "SELECT * FROM schedule_fires WHERE schedule_id = %s ORDER BY fire_at DESC LIMIT %s",
        (schedule_id, limit),
    )
    return list(cur.fetchall())


def task_statuses(cur, tasks: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """(table, id) -> status for tasks that still exist, one query per table."""
    by_table: dict[str, set[int]] = {}
    for table_name, task_id in tasks:
        by_table.setdefault(table_name, set()).add(task_id)
    found: dict[tuple[str, int], int] = {}
    for table_name, ids in by_table.items():
        with missing_table_skipped():
            table = quote_table(table_name, None)
            cur.execute(f"SELECT id, status FROM {checked(table)} WHERE id IN %s", (tuple(ids),))
            for row in cur.fetchall():
                found[(table_name, int(row["id"]))] = int(row["status"])
    return found


def schedules_overview(cur, schedule_id: int | None = None) -> tuple[list[dict[str, Any]], datetime]:
    """Every schedule (or one), each with the status of its last task
    (last_task_status, None when gone), and the database's UTC time."""
    if schedule_id is None:
        rows = list_schedules(cur)
    else:
        row = get_schedule(cur, schedule_id)
        rows = [] if row is None else [row]
    last_tasks = [
        (row["last_task_table"], int(row["last_task_id"]))
        for row in rows
        if row["last_task_table"] and row["last_task_id"] is not None
    ]
    statuses = task_statuses(cur, last_tasks)
    for row in rows:
        key = (row["last_task_table"], row["last_task_id"])
        row["last_task_status"] = statuses.get(key) if row["last_task_id"] is not None else None
    return rows, utc_now(cur)


def fires_overview(cur, schedule_id: int, limit: int) -> list[dict[str, Any]] | None:
    """The schedule's ledger, newest first, each row with its task's status
    (task_status); None when there is no such schedule."""
    if get_schedule(cur, schedule_id) is None:
        return None
    fires = list_fires(cur, schedule_id, limit)
    statuses = task_statuses(
        cur, [(fire["task_table"], int(fire["task_id"])) for fire in fires if fire["task_id"] is not None]
    )
    for fire in fires:
        fire["task_status"] = (
            statuses.get((fire["task_table"], fire["task_id"])) if fire["task_id"] is not None else None
        )
    return fires


def free_fire_time(cur, schedule_id: int, moment: datetime) -> datetime:
    """A manual run's fire time: `moment`, moved on by a millisecond while it
    is a whole second (the cadence's fires are whole seconds, so a manual run
    never takes a scheduled fire's place) or already in the ledger. The
    caller holds the schedule's row lock, so no other run can take it meanwhile."""
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    while moment.microsecond == 0 or recorded_fires(cur, schedule_id, [moment]):
        moment += timedelta(milliseconds=1)
    return moment

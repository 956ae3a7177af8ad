"""Turning enqueue calls into task rows: which table a queue name means,
the checks that give a malformed task a clear error, the insert (one
statement per batch of up to 10,000; SQL in admin_store.py) and the answer
to a dedupe_key that an active task already holds.

geventq.Client uses it from plain threads, a handler's `ctx.enqueue` from the
executor's greenlets: each hands it the pool it runs on (db.THREADS or
db.GREENLETS) and what to call after tasks were added (waking the servers
that run the queue).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import ujson

from geventq import admin_store, store
from geventq.api_schema import Invalid, to_database_time
from geventq.attempts import Status
from geventq.db import Database, QuotedTable, quote_table
from geventq.errors import (
    DatabaseUnavailable,
    InvalidTask,
    NoSuchColumn,
    NoSuchTable,
    TaskNotFound,
    TaskStateError,
    UnknownQueue,
)
from geventq.rows import task_json
from geventq.validation import clip, type_name

T = TypeVar("T")

MAX_BATCH = 10_000  # tasks per INSERT statement (the admin's batch_create takes as many)
DIRECTORY_MAX_AGE = 5.0  # seconds a queue name -> table mapping is trusted
MISS_RETRY = 0.5  # an unknown name re-reads queue_configs at most this often
SETTINGS_MAX_AGE = 60.0  # the database's UTC offset can change with daylight saving
MAX_DELAY = 10 * 365 * 86400.0
INT_RANGE = (-(2**31), 2**31 - 1)
KEY_LENGTH = 191
# Task fields a table column must exist for, and the feature that says it does.
COLUMN_FIELDS = ("priority", "dedupe_key", "concurrency_key")
TASK_FIELDS = frozenset({"task_type", "params", "at", "delay", "max_retries", *COLUMN_FIELDS})


class TaskId(int):
    """A task's id. `duplicate` is True when the task was not created because
    a pending or running task of the queue holds the same dedupe_key: the id
    is that task's."""

    # A class default, set on the instance only for a duplicate: TaskId(n) is
    # then int's own constructor, which matters for 100,000 ids.
    duplicate: bool = False

    def __repr__(self) -> str:
        return f"TaskId({int(self)}{', duplicate=True' if self.duplicate else ''})"

    # str() and JSON say the number, as for any int
    __str__ = int.__repr__


@dataclass(frozen=True)
class Target:
    """A queue resolved to its table, with the table's optional columns."""

    queue_name: str
    table_name: str
    table: QuotedTable
    features: store.TaskTableFeatures


@dataclass(frozen=True)
class BulkRetry:
    """What retry_all did: tasks back to pending, and tasks left as they were
    because another pending or running task holds their dedupe_key."""

    retried: int
    skipped: int


# --- checking one task ------------------------------------------------------------


def task_row(
    task_type: Any,
    params: Any = None,
    *,
    at: Any = None,
    delay: Any = None,
    max_retries: Any = None,
    priority: Any = None,
    dedupe_key: Any = None,
    concurrency_key: Any = None,
    where: str = "",
) -> dict[str, Any]:
    """One task as admin_store's inserts take it; InvalidTask naming the
    field (prefixed with `where`, e.g. `tasks[3].`) when a value is wrong.
    Plain isinstance checks: enqueue_many runs this 100,000 times."""
    if type(task_type) is not str or not 0 < len(task_type) <= 50:
        raise _invalid(where, "task_type", "a string of 1 to 50 characters", task_type)
    row: dict[str, Any] = {"task_type": task_type, "task_params": _params_text(params, where)}
    if at is not None:
        if delay is not None:
            raise InvalidTask(f"{where}at: give at or delay, not both")
        if not isinstance(at, datetime):
            raise _invalid(where, "at", "a datetime (naive: the database's time zone)", at)
        row["schedule_time"] = at
    elif delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY:
            raise _invalid(where, "delay", "seconds from 0 to 315,360,000", delay)
        row["delay"] = round(delay * 1_000_000)  # microseconds, added to NOW(3) by the database
    if max_retries is not None:
        row["max_retries"] = _integer(where, "max_retries", max_retries, 0, 100)
    if priority is not None:
        row["priority"] = _integer(where, "priority", priority, *INT_RANGE)
    if dedupe_key is not None:
        row["dedupe_key"] = _key(where, "dedupe_key", dedupe_key)
    if concurrency_key is not None:
        row["concurrency_key"] = _key(where, "concurrency_key", concurrency_key)
    return row


_PLAIN_TASK = frozenset({"task_type", "params"})


def task_row_from(index: int, task: Any) -> dict[str, Any]:
    """One item of enqueue_many: a mapping with task_type and, optionally,
    enqueue's keyword arguments."""
    if type(task) is dict and task.keys() <= _PLAIN_TASK:
        # The common item (a type and params), checked without building a
        # field prefix or a keyword call: enqueue_many runs this per task.
        task_type, params = task.get("task_type"), task.get("params")
        if type(task_type) is str and 0 < len(task_type) <= 50:
            if type(params) is dict:  # the commonest params: dumped here, checked as _params_text does
                try:
                    text = ujson.dumps(params, ensure_ascii=False, allow_nan=False)
                except (TypeError, OverflowError, ValueError):
                    text = None  # _params_text below says why, with the field's name
                if text is not None and text.isascii():
                    return {"task_type": task_type, "task_params": text}
            try:
                return {"task_type": task_type, "task_params": _params_text(params, "")}
            except InvalidTask as error:
                raise InvalidTask(f"tasks[{index}].{error}") from None
    where = f"tasks[{index}]."
    if not isinstance(task, Mapping):
        raise InvalidTask(
            f"tasks[{index}]: must be a dict with task_type and enqueue's options, got {type_name(task)}"
        )
    unknown = task.keys() - TASK_FIELDS
    if unknown:
        name = sorted(map(str, unknown))[0]
        raise InvalidTask(f"{where}{clip(name)}: unknown field (expected {', '.join(sorted(TASK_FIELDS))})")
    if "task_type" not in task:
        raise InvalidTask(f"{where}task_type: required")
    return task_row(**task, where=where)


def _params_text(params: Any, where: str) -> str:
    if params is None:
        return "{}"
    if isinstance(params, (dict, list)):
        try:
            text = ujson.dumps(params, ensure_ascii=False, allow_nan=False)
        except (TypeError, OverflowError, ValueError) as error:
            raise InvalidTask(f"{where}params: cannot be written as JSON: {error}") from None
    elif isinstance(params, str):
        text = params
        try:
            parsed = ujson.loads(text)
        except ValueError as error:
            raise InvalidTask(f"{where}params: is not valid JSON text: {error}") from None
        if not isinstance(parsed, (dict, list)):
            raise InvalidTask(
                f"{where}params: must be JSON text of an object or array, got {type_name(parsed)}"
            )
    else:
        raise _invalid(where, "params", "a dict, a list, JSON text of one, or None", params)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidTask(f"{where}params: must be valid Unicode text (no unpaired surrogates)") from None
    return text


def _integer(where: str, field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(where, field, f"an integer from {low:,} to {high:,}", value)
    return value


def _key(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= KEY_LENGTH:
        raise _invalid(where, field, f"a string of 1 to {KEY_LENGTH} characters", value)
    return value


def _invalid(where: str, field: str, expectation: str, value: Any) -> InvalidTask:
    shown = repr(clip(value)) if isinstance(value, str) else type_name(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        shown = repr(value)
    return InvalidTask(f"{where}{field}: must be {expectation}, got {shown}")


def check_columns(target: Target, rows: Sequence[dict[str, Any]]) -> None:
    """Every field a task sets has its column in the queue's table."""
    features = target.features
    present = {
        "priority": features.priority,
        "dedupe_key": features.dedupe,
        "concurrency_key": features.concurrency_key,
    }
    given = set().union(*rows)
    for field in COLUMN_FIELDS:
        if not present[field] and field in given:
            raise InvalidTask(f"{field}: {missing_column(target, field)}")


def missing_column(target: Target, field: str) -> str:
    where = f"table {target.table_name} of queue {target.queue_name}"
    if field == "dedupe_key" and target.features.dedupe_key:
        return (
            f"{where} has a dedupe_key column but no UNIQUE index on a dedupe_active column, "
            "so the database cannot enforce it (README: Priorities and de-duplication)"
        )
    return f"{where} has no {field} column (README: Priorities and de-duplication)"


# --- the producer ------------------------------------------------------------------


class Producer:
    """Enqueue, inspect, cancel and retry tasks by queue name, on `db`."""

    def __init__(self, db: Database, *, on_added: Callable[[Target], None] | None = None):
        self.db = db
        self._on_added = on_added
        self._lock = threading.Lock()  # a gevent lock once the process is monkey-patched
        self._tables: dict[str, str] = {}  # queue_name -> table_name
        self._read_at = float("-inf")
        self._features: dict[str, tuple[store.TaskTableFeatures, float]] = {}
        self._settings: dict[str, Any] | None = None
        self._settings_at = float("-inf")

    # --- enqueueing ---

    def enqueue(
        self,
        queue: str,
        task_type: str,
        params: Any = None,
        *,
        at: datetime | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        priority: int | None = None,
        dedupe_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TaskId:
        row = task_row(
            task_type,
            params,
            at=at,
            delay=delay,
            max_retries=max_retries,
            priority=priority,
            dedupe_key=dedupe_key,
            concurrency_key=concurrency_key,
        )
        target = self._ready(queue, [row])
        if "dedupe_key" in row:
            index = target.features.dedupe_index
            task_id, duplicate = self._call(target, admin_store.insert_task_deduped, target.table, row, index)
        else:
            task_id, duplicate = self._call(target, admin_store.insert_task, target.table, row), False
        if not duplicate:
            self._added(target)
        result = TaskId(task_id)
        if duplicate:
            result.duplicate = True
        return result

    def enqueue_many(self, queue: str, tasks: Iterable[Mapping[str, Any]]) -> list[TaskId]:
        """All the tasks or none: one transaction, one statement per 10,000."""
        rows = [task_row_from(index, task) for index, task in enumerate(tasks)]  # checks every task first
        if not rows:
            return []
        target = self._ready(queue, rows)
        settings = self.settings()
        step, returning = settings["consecutive_id_step"], settings["returning"]
        # Neither consecutive ids nor RETURNING: ids are read back in a snapshot (admin_store.insert_tasks).
        ids, duplicates = self._call(
            target,
            self._insert_batches,
            target,
            rows,
            (returning, int(settings["max_allowed_packet"]) - 1024, step),
            transaction=True,
            snapshot=not (step or returning),
        )
        if len(duplicates) < len(rows):
            self._added(target)
        task_ids = list(map(TaskId, ids))
        for index in duplicates:
            task_ids[index].duplicate = True
        return task_ids

    @staticmethod
    def _insert_batches(
        cur, target: Target, rows: list[dict[str, Any]], how: tuple[bool, int, int]
    ) -> tuple[list[int], set[int]]:
        """`how`: (RETURNING, max statement size, consecutive id step), as admin_store.insert_tasks."""
        returning, max_statement, id_step = how
        ids: list[int] = []
        duplicates: set[int] = set()
        dedupe_index = target.features.dedupe_index if target.features.dedupe else None
        for start in range(0, len(rows), MAX_BATCH):
            batch = rows[start : start + MAX_BATCH]
            if dedupe_index is not None and any("dedupe_key" in row for row in batch):
                batch_ids, clashes = admin_store.insert_tasks_deduped(
                    cur, target.table, batch, returning, max_statement, dedupe_index, id_step
                )
                duplicates.update(start + index for index in clashes)
            else:
                batch_ids = admin_store.insert_tasks(
                    cur, target.table, batch, returning, max_statement, id_step
                )
            ids += batch_ids
        return ids, duplicates

    # --- inspecting and changing one task ---

    def get(self, queue: str, task_id: int) -> dict[str, Any] | None:
        """The task as a dict with task_params parsed; None when there is no such task."""
        target = self.target(queue)
        row = self._call(target, admin_store.get_task, target.table, _task_id(task_id))
        return None if row is None else task_json(row)

    def list_tasks(
        self, queue: str, status: int | None, task_type: str | None, limit: int, offset: int
    ) -> dict[str, Any]:
        """A page of tasks, newest first: {"items", "next_offset"} as admin task/list."""
        if status is not None and status not in store.STATUS_NAMES:
            raise _invalid("", "status", "a task status (0-4)", status)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise _invalid("", "limit", "an integer from 1 to 1,000", limit)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise _invalid("", "offset", "an integer (next_offset of the previous page)", offset)
        target = self.target(queue)
        wanted = None if status is None else int(status)
        rows = self._call(target, admin_store.list_tasks, target.table, wanted, task_type, limit, offset)
        return {
            "items": [task_json(row) for row in rows[:limit]],
            "next_offset": admin_store.page_cursor(rows, limit),
        }

    def cancel(self, queue: str, task_id: int) -> dict[str, Any]:
        """Cancel a task: a pending one at once; for a running one a cancel
        request is stored, which its server acts on within about a second
        (the answer then has `"cancel_requested": True` and the task still
        running). The task after. TaskNotFound, or TaskStateError when it is
        done, failed or cancelled already."""
        target = self.target(queue)
        done, row = self._call(
            target,
            admin_store.cancel_task,
            target.table,
            target.table_name,
            _task_id(task_id),
            transaction=True,
        )
        task = self._changed(target, task_id, bool(done), row, "there is nothing to cancel")
        if done == "requested":
            task["cancel_requested"] = True
        return task

    def retry(self, queue: str, task_id: int) -> dict[str, Any]:
        """A failed or cancelled task back to pending, due now, retries reset."""
        target = self.target(queue)
        changed, row = self._call(
            target,
            admin_store.retry_task,
            target.table,
            _task_id(task_id),
            target.features.dedupe_index,
            transaction=True,
        )
        result = self._changed(target, task_id, changed, row, "only failed or cancelled tasks can be retried")
        self._added(target)
        return result

    def retry_all(
        self,
        queue: str,
        status: Status = Status.FAILED,
        task_type: str | None = None,
        *,
        batch: int = 1000,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> BulkRetry:
        """Every failed (or cancelled) task of the queue back to pending, a
        batch of ids at a time (each batch one UPDATE, committed on its own,
        so a large retry does not hold locks for long); `progress(done, skipped,
        total)` after each batch, the servers woken after each."""
        if status not in (Status.FAILED, Status.CANCELLED):
            raise InvalidTask(f"status: must be failed or cancelled, got {status!r}")
        target = self.target(queue)
        total = self._call(target, admin_store.count_tasks, target.table, int(status), task_type)
        retried = skipped = last_id = 0
        while True:
            ids = self._call(
                target, admin_store.task_ids_in_status, target.table, int(status), task_type, last_id, batch
            )
            if not ids:
                return BulkRetry(retried, skipped)
            changed, clashed = self._call(
                target,
                admin_store.retry_tasks,
                target.table,
                ids,
                int(status),
                target.features.dedupe_index,
                transaction=True,
            )
            retried, skipped, last_id = retried + changed, skipped + clashed, ids[-1]
            if changed:
                self._added(target)
            if progress is not None:
                progress(retried, skipped, max(total, retried + skipped))

    # --- queues and their tables ---

    def target(self, queue: str) -> Target:
        """The queue's table and its optional columns; UnknownQueue if none has that name."""
        if not isinstance(queue, str) or not queue:
            raise UnknownQueue(f"queue: must be a queue name (a non-empty string), got {type_name(queue)}")
        table_name = self._tables.get(queue) if time.monotonic() - self._read_at < DIRECTORY_MAX_AGE else None
        if table_name is None:
            table_name = self._read_directory().get(queue)
        if table_name is None:
            known = ", ".join(sorted(self._tables)) or "none"
            raise UnknownQueue(f"queue: no queue named {clip(queue)!r} in queue_configs (queues: {known})")
        return Target(queue, table_name, quote_table(table_name, None), self._table_features(table_name))

    def settings(self) -> dict[str, Any]:
        """The database's version (RETURNING or not), UTC offset and packet size, cached."""
        if self._settings is None or time.monotonic() - self._settings_at > SETTINGS_MAX_AGE:
            settings = self._plain_call(admin_store.server_settings)
            settings["returning"] = admin_store.supports_insert_returning(settings["version"])
            self._settings, self._settings_at = settings, time.monotonic()
        return self._settings

    def table_target(self, queue_name: str, table_name: str, table: QuotedTable) -> Target:
        """A target for a table already resolved (the admin API's `table`)."""
        return Target(queue_name, table_name, table, self._table_features(table_name))

    def with_columns(self, target: Target, rows: Sequence[dict[str, Any]]) -> Target:
        """`target` once every field the rows set has its column (read the
        table again if one seems missing: it may have been added since);
        InvalidTask naming the field otherwise."""
        try:
            check_columns(target, rows)
            return target
        except InvalidTask:
            features = self._table_features(target.table_name, refresh=True)
            target = Target(target.queue_name, target.table_name, target.table, features)
            check_columns(target, rows)
            return target

    def _ready(self, queue: str, rows: list[dict[str, Any]]) -> Target:
        """The queue's target once every field the rows set has a column, and
        aware `at` values converted to the database's time zone."""
        target = self.with_columns(self.target(queue), rows)
        timed = len(rows) == 1 or "schedule_time" in set().union(*rows)
        if timed and any(getattr(row.get("schedule_time"), "tzinfo", None) is not None for row in rows):
            offset = int(self.settings()["utc_offset"])
            for index, row in enumerate(rows):
                try:
                    row["schedule_time"] = to_database_time(row.get("schedule_time"), offset)
                except Invalid as invalid:
                    prefix = f"tasks[{index}]." if len(rows) > 1 else ""
                    raise InvalidTask(prefix + "at: " + invalid.problems[0].split(": ", 1)[1]) from None
        return target

    def _read_directory(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._read_at >= MISS_RETRY:
                rows = self._plain_call(store.list_queue_configs)
                self._tables = {row["queue_name"]: row["table_name"] for row in rows}
                self._read_at = time.monotonic()
            return self._tables

    def _table_features(self, table_name: str, refresh: bool = False) -> store.TaskTableFeatures:
        known = self._features.get(table_name)
        if known is not None and not (refresh and time.monotonic() - known[1] >= 1.0):
            return known[0]
        features = self._plain_call(store.task_table_features, table_name)
        self._features[table_name] = (features, time.monotonic())
        return features

    def _added(self, target: Target) -> None:
        if self._on_added is not None:
            self._on_added(target)

    # --- calling the database ---

    def _call(self, target: Target, fn: Callable[..., T], *args: Any, **options: Any) -> T:
        """db.call, with the errors a producer can act on named for it."""
        try:
            return self._plain_call(fn, *args, **options)
        except NoSuchTable as error:
            raise NoSuchTable(
                f"queue {target.queue_name}: its table {target.table_name} is missing: {error}"
            ) from None
        except NoSuchColumn as error:
            self._features.pop(target.table_name, None)  # read the table's columns afresh next time
            raise NoSuchColumn(f"queue {target.queue_name}: table {target.table_name}: {error}") from None

    def _plain_call(self, fn: Callable[..., T], *args: Any, **options: Any) -> T:
        try:
            return self.db.call(fn, *args, **options)
        except DatabaseUnavailable as error:
            raise DatabaseUnavailable(
                f"database {self.db.database} at {self.db.address} is unreachable: {error}"
            ) from None

    def _changed(
        self, target: Target, task_id: int, changed: bool, row: dict[str, Any] | None, rule: str
    ) -> dict[str, Any]:
        if row is None:
            raise TaskNotFound(f"id: queue {target.queue_name} has no task with id {task_id}")
        if not changed:
            status = store.STATUS_NAMES.get(row["status"], f"in status {row['status']}")
            raise TaskStateError(f"id: task {task_id} is {status}; {rule}")
        return task_json(row)


def _task_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise _invalid("", "id", "a task id (a positive integer)", value)
    return int(value)

"""The admin HTTP API (Bottle), served from the executor process.

Routes are thin: each is declared by an `Endpoint` (geventq.api_schema) that
says what it accepts and answers; `EnvelopePlugin` parses and validates the
query and body against it, calls the route, and turns what comes back, or
what was raised, into the JSON envelope {"code", "message", "data"}. The same
declarations build the OpenAPI document, so the two cannot disagree.
"""

from __future__ import annotations

import hmac
import re
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import bottle
import gevent
import ujson
from loguru import logger

from geventq import admin_store, openapi, schedule_store, store
from geventq import api_schema as spec
from geventq.api_schema import Endpoint, Invalid, array_of, ref
from geventq.catalog import QueueCatalog
from geventq.db import Database, QuotedTable, quote_table
from geventq.errors import (
    DatabaseError,
    DatabaseUnavailable,
    DuplicateKey,
    InvalidIdentifier,
    InvalidSchedule,
    InvalidTask,
    NoSuchColumn,
    NoSuchTable,
    RetryableConflict,
    TaskStateError,
)
from geventq.firing import ParkSchedule, cadence_of, enqueue_fire, target_table
from geventq.logs import JobLogs
from geventq.misfire import initial_fire
from geventq.peers import Peers, PeerUnreachable, parse_queue_list
from geventq.producer import Producer, Target
from geventq.queues import RunningQueues
from geventq.rows import jsonable, task_json

STATIC_DIR = Path(__file__).resolve().parent / "static"
BATCH_BODY_LIMIT = 16 * spec.MIB
LOG_LIMIT = 4 * spec.MIB  # a longer job log is answered by its end
SETTINGS_MAX_AGE = 60.0
HEALTH_TIMEOUT = 2.0  # the database's UTC offset can change with daylight saving
STATUS_NAMES = store.STATUS_NAMES


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Created:
    """A route's answer that is a 201."""

    status = 201

    def __init__(self, data: Any):
        self.data = data


class Accepted(Created):
    """A route's answer that is a 202: asked for, happening elsewhere soon."""

    status = 202


class Ok(Created):
    """A route's answer that is a 200 where the endpoint usually answers 201
    (task/create of a dedupe_key an active task holds)."""

    status = 200


class Call:
    """One validated request, as a route sees it."""

    def __init__(self, query: dict[str, Any], body: Any, table: QuotedTable | None):
        self.query = query
        self.body = body
        self.table = table

    @property
    def table_name(self) -> str:
        return self.query["table"]


# --- the shared state of the routes ------------------------------------------------

Route = tuple[Endpoint, Callable[["Admin", Call], Any]]


class Admin:
    def __init__(
        self,
        *,
        db: Database,
        server_id: str,
        heartbeat_timeout: float,
        catalog: QueueCatalog,
        queues: RunningQueues,
        job_logs: JobLogs,
        peers: Peers,
        tasks_added: Callable[[str], None],
        queues_changed: Callable[[], None],
        check_cancels: Callable[[], None],
        schedules_changed: Callable[[], None],
        producer: Producer | None = None,
    ):
        self.db = db
        self.server_id = server_id
        self.heartbeat_timeout = heartbeat_timeout
        self.catalog = catalog
        self.queues = queues
        self.job_logs = job_logs
        self.peers = peers
        # Due work was just committed to a table: scan now, here and on the servers running it.
        self.tasks_added = tasks_added
        # The task tables' optional columns (priority, dedupe_key), read once per table.
        self.producer = producer or Producer(db)
        self.queues_changed = queues_changed  # applies a queue change here at once, not at the next sync
        self.check_cancels = check_cancels  # this server's cancel watch looks now, not at its next poll
        self.schedules_changed = schedules_changed  # the schedule firer looks again now
        self.endpoints: list[Endpoint] = []  # every route's, for the OpenAPI document
        self._settings: dict[str, Any] | None = None
        self._settings_at = 0.0
        self._document: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        """The database's version, UTC offset and max_allowed_packet, cached."""
        if self._settings is None or time.monotonic() - self._settings_at > SETTINGS_MAX_AGE:
            settings = self.db.call(admin_store.server_settings)
            settings["returning"] = admin_store.supports_insert_returning(settings["version"])
            self._settings, self._settings_at = settings, time.monotonic()
        return self._settings

    def task_table(self, name: str) -> QuotedTable:
        """The quoted table of a registered queue; 404 for any other name."""
        table = self.catalog.table(name)
        if table is None:
            # Registered since the last config sync?
            rows = self.db.call(store.list_queue_configs)
            if name in {row["table_name"] for row in rows}:
                table = quote_table(name, None)
        if table is None:
            raise ApiError(404, f"table: no queue has table_name {name!r}")
        return table

    def database_time(self, tasks: list[dict[str, Any]]) -> None:
        """schedule_time given with an offset, converted to the database's time zone."""
        if any(
            task["schedule_time"] is not None and task["schedule_time"].tzinfo is not None for task in tasks
        ):
            offset = int(self.settings()["utc_offset"])
            for task in tasks:
                task["schedule_time"] = spec.to_database_time(task["schedule_time"], offset)

    def cancel_requested(self, owner: str) -> None:
        """A cancel request for `owner` was stored: have it look now. The
        request reaches it through the database anyway, within a second."""
        if owner == self.server_id:
            self.check_cancels()
        else:
            self.peers.check_cancels(owner)

    def task_target(self, call: Call, tasks: list[dict[str, Any]]) -> Target:
        """The request's table with its optional columns, once every field the
        tasks set (priority, dedupe_key) has its column; 400 otherwise."""
        assert call.table is not None, "task routes declare a table"
        queue_name = self.catalog.queue_of_table.get(call.table_name, call.table_name)
        target = self.producer.table_target(queue_name, call.table_name, call.table)
        return self.producer.with_columns(target, tasks)

    def document(self) -> dict[str, Any]:
        if self._document is None:
            from geventq import __version__

            self._document = openapi.document(self.endpoints, __version__)
        return self._document


# --- routes -------------------------------------------------------------------------

ROUTES: list[Route] = []

NOT_FOUND_TABLE = (404, "`table` is not the table_name of any queue, or the task does not exist")


def route(endpoint: Endpoint) -> Callable:
    def register(handler: Callable[[Admin, Call], Any]) -> Callable[[Admin, Call], Any]:
        ROUTES.append((endpoint, handler))
        return handler

    return register


@route(
    Endpoint(
        "GET",
        "/healthz",
        "Liveness for load balancers: the database round trip",
        spec.ref("Health"),
        tag="health",
        auth=False,
        errors=((503, "the database does not answer"),),
    )
)
def healthz(admin: Admin, call: Call) -> dict[str, Any]:
    started = time.monotonic()
    # A load balancer's probe wants an answer within seconds, not read_timeout.
    silent = DatabaseUnavailable(f"no answer within {HEALTH_TIMEOUT:g}s")
    try:
        with gevent.Timeout(HEALTH_TIMEOUT, silent):
            admin.db.call(store.database_now)
    except DatabaseError as error:
        raise ApiError(503, f"database unavailable: {error}") from None
    return {
        "server_id": admin.server_id,
        "db_rtt_ms": round((time.monotonic() - started) * 1000, 3),
        "db_node": admin.db.address,
    }


@route(
    Endpoint(
        "POST",
        "/admin/queue/create",
        "Create a queue, and its task table when missing",
        ref("QueueRow"),
        tag="queues",
        body=spec.QUEUE_CREATE,
        status=201,
        errors=((409, "a queue with that queue_name or table_name exists"),),
    )
)
def queue_create(admin: Admin, call: Call) -> Created:
    row = admin.db.call(admin_store.create_queue, call.body)
    admin.queues_changed()
    return Created(row)


@route(
    Endpoint(
        "GET",
        "/admin/queue/list",
        "Every queue with its task counts by status",
        array_of("Queue"),
        tag="queues",
    )
)
def queue_list(admin: Admin, call: Call) -> list[dict[str, Any]]:
    return admin.db.call(admin_store.queue_overview)


@route(
    Endpoint(
        "PUT",
        "/admin/queue/update",
        "Change some fields of a queue",
        ref("QueueRow"),
        tag="queues",
        query=spec.QUEUE_ID_QUERY,
        body=spec.QUEUE_UPDATE,
        errors=((404, "no queue has that id"), (409, "another queue has that queue_name or table_name")),
    )
)
def queue_update(admin: Admin, call: Call) -> dict[str, Any]:
    row = admin.db.call(admin_store.update_queue, call.query["id"], call.body)
    if row is None:
        raise ApiError(404, f"id: no queue has id {call.query['id']}")
    admin.queues_changed()
    return row


@route(
    Endpoint(
        "DELETE",
        "/admin/queue/delete",
        "Remove a queue (its task table stays)",
        ref("QueueRow"),
        tag="queues",
        query=spec.QUEUE_ID_QUERY,
        errors=((404, "no queue has that id"),),
    )
)
def queue_delete(admin: Admin, call: Call) -> dict[str, Any]:
    row = admin.db.call(admin_store.delete_queue, call.query["id"])
    if row is None:
        raise ApiError(404, f"id: no queue has id {call.query['id']}")
    admin.queues_changed()
    return row


@route(
    Endpoint(
        "POST",
        "/admin/queue/wake",
        "Scan the queue of this table now (sent by other servers)",
        ref("Woken"),
        tag="queues",
        query=spec.TABLE_QUERY,
        errors=(NOT_FOUND_TABLE,),
    )
)
def queue_wake(admin: Admin, call: Call) -> dict[str, Any]:
    runner = admin.queues.for_table(call.table_name)
    if runner is not None:
        runner.wake()
    return {"table": call.table_name, "woken": runner is not None}


@route(
    Endpoint(
        "GET",
        "/admin/queue/throughput",
        "Tasks done and failed per minute, per queue",
        ref("Throughput"),
        tag="queues",
        query=spec.THROUGHPUT_QUERY,
    )
)
def queue_throughput(admin: Admin, call: Call) -> dict[str, Any]:
    return admin.db.call(admin_store.finished_per_minute, call.query["minutes"])


@route(
    Endpoint(
        "GET",
        "/admin/server/list",
        "Every server with its heartbeat, liveness and queues",
        array_of("Server"),
        tag="servers",
    )
)
def server_list(admin: Admin, call: Call) -> list[dict[str, Any]]:
    rows = admin.db.call(admin_store.list_servers, admin.heartbeat_timeout)
    for row in rows:
        row["alive"] = bool(row["alive"])
        row["queues"] = parse_queue_list(row.get("queues"))
    return rows


@route(
    Endpoint(
        "POST",
        "/admin/task/create",
        "Create a task",
        ref("TaskCreated"),
        tag="tasks",
        query=spec.TABLE_QUERY,
        body=spec.TASK_CREATE,
        status=201,
        errors=(NOT_FOUND_TABLE,),
        also=(
            (
                200,
                "not created: a pending or running task holds the dedupe_key (duplicate: true)",
                ref("TaskCreated"),
            ),
        ),
    )
)
def task_create(admin: Admin, call: Call) -> Created:
    target = admin.task_target(call, [call.body])
    admin.database_time([call.body])
    if "dedupe_key" in call.body:
        index = target.features.dedupe_index
        task_id, duplicate = admin.db.call(admin_store.insert_task_deduped, target.table, call.body, index)
        if duplicate:
            # Nothing was created: 200 with the id of the task that holds the key.
            return Ok({"id": task_id, "duplicate": True})
    else:
        task_id = admin.db.call(admin_store.insert_task, target.table, call.body)
    admin.tasks_added(call.table_name)
    return Created({"id": task_id})


@route(
    Endpoint(
        "POST",
        "/admin/task/batch_create",
        "Create up to 10,000 tasks in one statement, all or nothing",
        ref("TasksCreated"),
        tag="tasks",
        query=spec.TABLE_QUERY,
        body=spec.TASK_BATCH,
        body_limit=BATCH_BODY_LIMIT,
        status=201,
        errors=(NOT_FOUND_TABLE,),
    )
)
def task_batch_create(admin: Admin, call: Call) -> Created:
    target = admin.task_target(call, call.body)
    admin.database_time(call.body)
    settings = admin.settings()
    limits = (settings["returning"], int(settings["max_allowed_packet"]) - 1024)
    duplicates: set[int] = set()
    if any("dedupe_key" in task for task in call.body):
        ids, duplicates = admin.db.call(
            admin_store.insert_tasks_deduped,
            target.table,
            call.body,
            *limits,
            target.features.dedupe_index,
            transaction=settings["returning"],
            snapshot=not settings["returning"],
        )
    else:
        ids = admin.db.call(
            admin_store.insert_tasks, target.table, call.body, *limits, snapshot=not settings["returning"]
        )
    admin.tasks_added(call.table_name)
    # `duplicates`: positions whose id is that of a pending or running task holding the dedupe_key
    return Created({"ids": ids, "count": len(ids), "duplicates": sorted(duplicates)})


@route(
    Endpoint(
        "GET",
        "/admin/task/list",
        "Tasks of a queue, newest first, a page at a time",
        ref("TaskPage"),
        tag="tasks",
        query=spec.TASK_LIST_QUERY,
        errors=(NOT_FOUND_TABLE,),
    )
)
def task_list(admin: Admin, call: Call) -> dict[str, Any]:
    query = call.query
    rows = admin.db.call(
        admin_store.list_tasks,
        call.table,
        query.get("status"),
        query.get("task_type"),
        query["limit"],
        query["offset"],
    )
    return {
        "items": [task_json(row) for row in rows[: query["limit"]]],
        "next_offset": admin_store.page_cursor(rows, query["limit"]),
    }


@route(
    Endpoint(
        "GET",
        "/admin/task/get",
        "One task",
        ref("Task"),
        tag="tasks",
        query=spec.TASK_QUERY,
        errors=(NOT_FOUND_TABLE,),
    )
)
def task_get(admin: Admin, call: Call) -> dict[str, Any]:
    return task_json(found(admin.db.call(admin_store.get_task, call.table, call.query["id"]), call))


@route(
    Endpoint(
        "POST",
        "/admin/task/retry",
        "A failed or cancelled task back to pending, retries reset",
        ref("Task"),
        tag="tasks",
        query=spec.TASK_QUERY,
        errors=(
            NOT_FOUND_TABLE,
            (409, "the task is not failed or cancelled, or an active task holds its dedupe_key"),
        ),
    )
)
def task_retry(admin: Admin, call: Call) -> dict[str, Any]:
    dedupe_index = admin.task_target(call, []).features.dedupe_index
    changed, row = admin.db.call(
        admin_store.retry_task, call.table, call.query["id"], dedupe_index, transaction=True
    )
    row = found(row, call)
    if not changed:
        raise ApiError(
            409, f"id: task {row['id']} is {status_name(row)}; only failed or cancelled tasks can be retried"
        )
    admin.tasks_added(call.table_name)
    return task_json(row)


@route(
    Endpoint(
        "POST",
        "/admin/task/cancel",
        "Cancel a task: a pending one at once (200), a running one by asking its server to stop it (202)",
        ref("Task"),
        tag="tasks",
        query=spec.TASK_QUERY,
        errors=(NOT_FOUND_TABLE, (409, "the task is done, failed or cancelled already")),
        also=(
            (
                202,
                "running: its server stops the handler within about a second (geventq.TaskCancelled) "
                "and the task ends cancelled, unless it finished first",
                ref("CancelRequested"),
            ),
        ),
    )
)
def task_cancel(admin: Admin, call: Call) -> Any:
    done, row = admin.db.call(
        admin_store.cancel_task, call.table, call.table_name, call.query["id"], transaction=True
    )
    row = found(row, call)
    if done == "requested":
        admin.cancel_requested(row["server_id"])
        return Accepted({"cancel_requested": True, "server_id": row["server_id"], "task": task_json(row)})
    if not done:
        raise ApiError(409, f"id: task {row['id']} is {status_name(row)} already; there is nothing to cancel")
    return task_json(row)


@route(
    Endpoint(
        "POST",
        "/admin/cancels/check",
        "Look for cancel requests addressed to this server now (sent by other servers)",
        ref("Checked"),
        tag="tasks",
        uses_database=False,
    )
)
def cancels_check(admin: Admin, call: Call) -> dict[str, Any]:
    admin.check_cancels()
    return {"checked": True}


@route(
    Endpoint(
        "GET",
        "/admin/task/log",
        "The job log of a task, from the server that ran it",
        ref("TaskLog"),
        tag="tasks",
        query=spec.TASK_LOG_QUERY,
        errors=(NOT_FOUND_TABLE, (502, "the server that ran the task did not answer")),
    )
)
def task_log(admin: Admin, call: Call) -> dict[str, Any]:
    row = found(admin.db.call(admin_store.get_task, call.table, call.query["id"]), call)
    log_id, ran_on = f"{call.table_name}-{row['id']}", row["server_id"] or ""
    peer = None
    if not call.query["local"] and ran_on not in ("", admin.server_id):
        peer = admin.db.call(admin_store.is_server_alive, ran_on, admin.heartbeat_timeout)
    if peer is None:
        text, source = admin.job_logs.read(log_id), "local"
    else:
        authorization = bottle.request.get_header("Authorization")
        try:
            text, source = admin.peers.fetch_log(peer, call.table_name, row["id"], authorization), "remote"
        except PeerUnreachable as error:
            raise ApiError(502, f"log: {error}") from None
    truncated = len(text) > LOG_LIMIT
    return {
        "log_id": log_id,
        "server_id": ran_on,
        "source": source,
        "log": text[-LOG_LIMIT:] if truncated else text,
        "truncated": truncated,
    }


# --- schedules ---------------------------------------------------------------------------

NOT_FOUND_SCHEDULE = (404, "no schedule has that id")
NEXT_FIRES = 5


@route(
    Endpoint(
        "POST",
        "/admin/schedule/create",
        "Create a recurring task: cron or fixed rate; starts at its first fire after now",
        ref("Schedule"),
        tag="schedules",
        body=spec.SCHEDULE_CREATE,
        status=201,
        errors=((409, "a schedule with that name exists"),),
    )
)
def schedule_create(admin: Admin, call: Call) -> Created:
    body = call.body
    check_cadence(body)

    def create(cur) -> dict[str, Any]:
        check_queue(cur, body["queue_name"])
        if schedule_store.schedule_by_name(cur, body["name"]) is not None:
            raise DuplicateKey(f"name: a schedule named {body['name']!r} exists")
        return schedule_store.create_schedule(cur, body, lambda now: initial_fire(cadence_of(body), now))

    row = admin.db.call(create, transaction=True)
    admin.schedules_changed()
    return Created(one_schedule(admin, row["id"]))


@route(
    Endpoint(
        "GET",
        "/admin/schedule/list",
        "Every schedule with its next five fire times",
        array_of("Schedule"),
        tag="schedules",
    )
)
def schedule_list(admin: Admin, call: Call) -> list[dict[str, Any]]:
    rows, now = admin.db.call(schedule_store.schedules_overview)
    return [schedule_json(row, now) for row in rows]


@route(
    Endpoint(
        "GET",
        "/admin/schedule/get",
        "One schedule with its next five fire times",
        ref("Schedule"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        errors=(NOT_FOUND_SCHEDULE,),
    )
)
def schedule_get(admin: Admin, call: Call) -> dict[str, Any]:
    return one_schedule(admin, call.query["id"])


@route(
    Endpoint(
        "PUT",
        "/admin/schedule/update",
        "Change some fields of a schedule; it restarts at its first fire after now",
        ref("Schedule"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        body=spec.SCHEDULE_UPDATE,
        errors=(NOT_FOUND_SCHEDULE, (409, "another schedule has that name")),
    )
)
def schedule_update(admin: Admin, call: Call) -> dict[str, Any]:
    body, schedule_id = call.body, call.query["id"]

    def changes(cur, row: dict[str, Any]) -> dict[str, Any]:
        changed = with_one_cadence(body)
        check_cadence({**row, **changed})
        if "queue_name" in changed:
            check_queue(cur, changed["queue_name"])
        if "name" in changed:
            clash = schedule_store.schedule_by_name(cur, changed["name"])
            if clash is not None and clash["id"] != schedule_id:
                raise DuplicateKey(f"name: schedule {clash['id']} is named {changed['name']!r}")
        return changed

    return change_schedule(admin, schedule_id, changes)


@route(
    Endpoint(
        "DELETE",
        "/admin/schedule/delete",
        "Remove a schedule: it fires no more (its fire history stays)",
        ref("Schedule"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        errors=(NOT_FOUND_SCHEDULE,),
    )
)
def schedule_delete(admin: Admin, call: Call) -> dict[str, Any]:
    row = admin.db.call(schedule_store.delete_schedule, call.query["id"], transaction=True)
    if row is None:
        raise ApiError(404, f"id: no schedule has id {call.query['id']}")
    admin.schedules_changed()
    row["last_task_status"] = None
    return schedule_json(row, None)


@route(
    Endpoint(
        "POST",
        "/admin/schedule/pause",
        "Pause a schedule: no fires until it is resumed",
        ref("Schedule"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        errors=(NOT_FOUND_SCHEDULE,),
    )
)
def schedule_pause(admin: Admin, call: Call) -> dict[str, Any]:
    return change_schedule(admin, call.query["id"], lambda cur, row: {"status": 0})


@route(
    Endpoint(
        "POST",
        "/admin/schedule/resume",
        "Resume a schedule at its first fire after now (nothing fires retroactively)",
        ref("Schedule"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        errors=(NOT_FOUND_SCHEDULE,),
    )
)
def schedule_resume(admin: Admin, call: Call) -> dict[str, Any]:
    return change_schedule(admin, call.query["id"], lambda cur, row: {"status": 1})


@route(
    Endpoint(
        "POST",
        "/admin/schedule/run",
        "Create one task of the schedule now, recorded in its ledger; the schedule is unchanged",
        ref("ScheduleFire"),
        tag="schedules",
        query=spec.SCHEDULE_ID_QUERY,
        status=201,
        errors=(NOT_FOUND_SCHEDULE, (409, "the schedule's queue does not exist")),
    )
)
def schedule_run(admin: Admin, call: Call) -> Created:
    schedule_id = call.query["id"]

    def run(cur) -> dict[str, Any] | None:
        row = schedule_store.get_schedule(cur, schedule_id, lock=True)
        if row is None:
            return None
        try:
            table_name = target_table(cur, row)
        except ParkSchedule as why:
            raise ApiError(409, f"queue_name: {why.reason}") from None
        fire_at = schedule_store.free_fire_time(cur, schedule_id, schedule_store.utc_now(cur))
        task_id = enqueue_fire(cur, row, table_name, fire_at)
        return {
            "schedule_id": schedule_id,
            "fire_at": fire_at,
            "task_table": table_name,
            "task_id": task_id,
            "outcome": "enqueued",
        }

    try:
        fired = admin.db.call(run, transaction=True)
    except InvalidSchedule as error:
        raise ApiError(409, f"{error} (fix the schedule first)") from None
    if fired is None:
        raise ApiError(404, f"id: no schedule has id {schedule_id}")
    admin.tasks_added(fired["task_table"])
    return Created(fired)


@route(
    Endpoint(
        "GET",
        "/admin/schedule/fires",
        "A schedule's fires, newest first, with their tasks' status",
        array_of("ScheduleFire"),
        tag="schedules",
        query=spec.SCHEDULE_FIRES_QUERY,
        errors=(NOT_FOUND_SCHEDULE,),
    )
)
def schedule_fires(admin: Admin, call: Call) -> list[dict[str, Any]]:
    fires = admin.db.call(schedule_store.fires_overview, call.query["id"], call.query["limit"])
    if fires is None:
        raise ApiError(404, f"id: no schedule has id {call.query['id']}")
    return fires


def with_one_cadence(body: dict[str, Any]) -> dict[str, Any]:
    """An update that gives a cron switches the schedule to cron (and an
    interval to a fixed rate): the other of the two becomes NULL unless given."""
    changed = dict(body)
    for given, other in (("cron", "interval_seconds"), ("interval_seconds", "cron")):
        if changed.get(given) is not None and other not in changed:
            changed[other] = None
    return changed


def check_cadence(fields: dict[str, Any]) -> None:
    try:
        cadence_of(fields)
    except InvalidSchedule as error:
        raise Invalid([str(error)]) from None


def check_queue(cur, queue_name: str) -> None:
    if not schedule_store.queue_exists(cur, queue_name):
        raise Invalid([f"queue_name: no queue is named {queue_name!r}"])


def change_schedule(
    admin: Admin, schedule_id: int, changes: Callable[[Any, dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Apply `changes(cur, row)` and restart the schedule at its first fire after now."""

    def update(cur) -> dict[str, Any] | None:
        return schedule_store.update_schedule(
            cur,
            schedule_id,
            lambda row: changes(cur, row),
            lambda row, now: initial_fire(cadence_of(row), now),
        )

    row = admin.db.call(update, transaction=True)
    if row is None:
        raise ApiError(404, f"id: no schedule has id {schedule_id}")
    admin.schedules_changed()
    return one_schedule(admin, schedule_id)


def one_schedule(admin: Admin, schedule_id: int) -> dict[str, Any]:
    rows, now = admin.db.call(schedule_store.schedules_overview, schedule_id)
    if not rows:
        raise ApiError(404, f"id: no schedule has id {schedule_id}")
    return schedule_json(rows[0], now)


def schedule_json(row: dict[str, Any], now: datetime | None) -> dict[str, Any]:
    """A schedule row as the API shows it: params parsed, the cadence in
    words, and its next five fire times (UTC): from next_fire_at while it is
    enabled, from now while it is paused (what resuming now would give).
    `error` says why a row made by SQL cannot fire."""
    row = task_json(row)
    row.pop("now", None)
    row["next_fires"], row["description"], row["error"] = [], None, None
    try:
        cadence = cadence_of(row)
    except InvalidSchedule as error:
        row["error"] = str(error)
        return row
    row["description"] = cadence.describe()
    if now is None:
        return row
    first = row["next_fire_at"] if row["status"] == 1 and row["next_fire_at"] is not None else None
    if first is None:
        first = cadence.next_after(now)
    row["next_fires"] = [first, *cadence.fires_after(first, NEXT_FIRES - 1)]
    return row


@route(
    Endpoint(
        "GET",
        "/admin/openapi.json",
        "This document",
        {"type": "object"},
        tag="meta",
        uses_database=False,
        raw="application/json",
    )
)
def openapi_json(admin: Admin, call: Call) -> dict[str, Any]:
    return admin.document()


@route(
    Endpoint(
        "GET",
        "/",
        "The dashboard",
        {"type": "string"},
        tag="meta",
        auth=False,
        uses_database=False,
        raw="text/html",
        errors=((404, "the dashboard is not installed"),),
    )
)
def dashboard(admin: Admin, call: Call) -> Any:
    return bottle.static_file("dashboard.html", root=str(STATIC_DIR), mimetype="text/html")


@route(
    Endpoint(
        "GET",
        "/static/{filename}",
        "The dashboard's files",
        {"type": "string"},
        tag="meta",
        query=spec.Spec(
            (
                spec.String(
                    "filename",
                    "a file of geventq/static",
                    required=True,
                    min_length=1,
                    max_length=100,
                    pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                ),
            )
        ),
        auth=False,
        uses_database=False,
        raw="*/*",
        errors=((404, "no such file"),),
    )
)
def static(admin: Admin, call: Call) -> Any:
    # bottle.static_file refuses any path that leaves its root.
    return bottle.static_file(call.query["filename"], root=str(STATIC_DIR))


# --- JSON for rows ---------------------------------------------------------------------


def found(row: dict[str, Any] | None, call: Call) -> dict[str, Any]:
    if row is None:
        raise ApiError(404, f"id: {call.table_name} has no task with id {call.query['id']}")
    return row


def status_name(row: dict[str, Any]) -> str:
    return STATUS_NAMES.get(row["status"], f"in status {row['status']}")


def envelope(data: Any = None, *, code: int = 0, message: str = "success") -> str:
    return ujson.dumps(
        {"code": code, "message": message, "data": data}, ensure_ascii=False, escape_forward_slashes=False
    )


def error_response(status: int, message: str) -> str:
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return envelope(None, code=status, message=message)


# --- request plumbing -------------------------------------------------------------------


def query_pairs() -> list[tuple[str, str]]:
    raw = bottle.request.environ.get("QUERY_STRING", "")
    # WSGI hands the raw bytes over as latin-1; the URL's own encoding is UTF-8.
    text = raw.encode("latin-1", "replace").decode("utf-8", "replace")
    try:
        return urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise Invalid(["query: too many parameters"]) from None


def read_body(limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them
    when Content-Length says so, and while reading when it does not."""
    length = bottle.request.content_length
    too_large = Invalid([f"body: larger than {limit // spec.MIB} MiB"], status=413)
    if length > limit:
        raise too_large
    stream = bottle.request.environ["wsgi.input"]
    if length >= 0:
        return stream.read(length)
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(min(65536, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def database_error(error: DatabaseError) -> ApiError | None:
    """The status a database error means for the caller, if it is not a bug."""
    if isinstance(error, DuplicateKey):
        # Ours name the field ("queue_name: …"); the server's name the key.
        message = str(error)
        return ApiError(409, message if re.match(r"^\w+: ", message) else f"duplicate: {message}")
    if isinstance(error, (DatabaseUnavailable, RetryableConflict)):
        return ApiError(503, f"database unavailable or busy, try again: {error}")
    if isinstance(error, NoSuchTable):
        return ApiError(404, f"table: the task table does not exist ({error})")
    if isinstance(error, NoSuchColumn):
        return ApiError(409, f"table: the task table lacks a base column ({error})")
    return None


class EnvelopePlugin:
    """Validation in, envelope out, for every route declared with an Endpoint."""

    name = "geventq_envelope"
    api = 2

    def __init__(self, admin: Admin):
        self.admin = admin

    def apply(self, callback: Callable, route: bottle.Route) -> Callable:
        endpoint: Endpoint | None = route.config.get("endpoint")
        if endpoint is None:
            return callback
        admin = self.admin

        def wrapper(**url_args: Any) -> Any:
            try:
                result = callback(admin, self._call(endpoint, url_args))
            except bottle.HTTPResponse:
                raise
            except Exception as error:  # noqa: BLE001 - every error becomes an envelope
                return self._error(endpoint, error)
            if endpoint.raw == "application/json":
                bottle.response.content_type = "application/json"
                return ujson.dumps(result, ensure_ascii=False, escape_forward_slashes=False)
            if endpoint.raw:
                return result
            status, data = (
                (result.status, result.data) if isinstance(result, Created) else (endpoint.status, result)
            )
            bottle.response.status = status
            bottle.response.content_type = "application/json"
            return envelope(jsonable(data))

        return wrapper

    def _call(self, endpoint: Endpoint, url_args: dict[str, str]) -> Call:
        pairs = query_pairs() + list(url_args.items())
        query = endpoint.query.parse_query(pairs)
        body = endpoint.parse_body(read_body(endpoint.body_limit)) if endpoint.body is not None else None
        table = self.admin.task_table(query["table"]) if "table" in query else None
        return Call(query, body, table)

    def _error(self, endpoint: Endpoint, error: Exception) -> str:
        if isinstance(error, Invalid):
            return error_response(error.status, "; ".join(error.problems))
        if isinstance(error, ApiError):
            return error_response(error.status, error.message)
        if isinstance(error, (InvalidIdentifier, InvalidTask)):
            return error_response(400, str(error))
        if isinstance(error, TaskStateError):
            return error_response(409, str(error))
        if isinstance(error, admin_store.StatementTooLarge):
            return error_response(413, f"body: {error}")
        if isinstance(error, DatabaseError):
            mapped = database_error(error)
            if mapped is not None:
                return error_response(mapped.status, mapped.message)
        logger.opt(exception=error).error("admin {} {} failed", endpoint.method, endpoint.path)
        return error_response(500, "internal server error (the detail is in the executor log)")


def check_token(token: str) -> None:
    """before_request: every /admin path needs the bearer token when one is set."""
    if not token or not bottle.request.path.startswith("/admin"):
        return
    require_bearer(token)


def require_bearer(token: str) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` (also
    used by /metrics when admin.metrics_auth is true)."""
    header = bottle.request.get_header("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("latin-1", "replace"), token.encode("utf-8")
    ):
        raise bottle.HTTPError(
            401,
            "authorization: send `Authorization: Bearer <admin.token>`",
            **{"WWW-Authenticate": 'Bearer realm="geventq"'},
        )


def bottle_error(error: bottle.HTTPError) -> str:
    """Bottle's own errors (no route, wrong method, auth, static files) as envelopes."""
    request = bottle.request
    status = error.status_code
    if status == 404 and str(error.body).startswith("Not found:"):
        message = f"no such endpoint: {request.method} {request.path}"
    elif status == 405:
        message = (
            f"method {request.method} is not allowed on {request.path}; "
            f"allowed: {bottle.response.get_header('Allow', '')}"
        )
    elif status >= 500:
        logger.error(
            "admin {} {} failed: {}",
            request.method,
            request.path,
            error.traceback or error.exception or error.body,
        )
        message = "internal server error (the detail is in the executor log)"
    else:
        message = str(error.body or bottle.HTTP_CODES.get(status, "error"))
    return error_response(status, message)


def create_app(admin: Admin, token: str, extra_routes: list[Route]) -> bottle.Bottle:
    """The admin's routes plus `extra_routes` (metrics), all validated,
    enveloped and documented the same way."""
    app = bottle.Bottle()
    app.uninstall("json")  # our plugin writes every JSON answer
    app.install(EnvelopePlugin(admin))
    app.add_hook("before_request", lambda: check_token(token))
    routes = [*ROUTES, *extra_routes]
    for endpoint, handler in routes:
        path = endpoint.path.replace("{filename}", "<filename:path>")
        app.route(path, endpoint.method, handler, endpoint=endpoint)
    admin.endpoints = [endpoint for endpoint, _ in routes]
    app.default_error_handler = bottle_error
    return app

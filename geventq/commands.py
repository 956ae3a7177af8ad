"""The operator commands of `geventq`: status, queues, tasks (list, get,
enqueue, retry, cancel) and schedules. Each reads or changes the database
through geventq.Client and the admin's own statements, so it works with no
executor running; tasks it makes due wake the servers running their queue.
Human tables by default, `--json` for scripts. Exit codes: geventq.cli."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any, TextIO

import ujson

from geventq import config, status
from geventq.attempts import Status
from geventq.client import Client
from geventq.errors import InvalidTask, TaskNotFound, TaskStateError
from geventq.rows import jsonable
from geventq.store import STATUS_NAMES
from geventq.validation import clip

OK, DATABASE_FAILED, NOT_FOUND, WRONG_STATUS = 0, 1, 3, 4
STATUS_BY_NAME = {status.label: status for status in Status}
TASK_COLUMNS = ("ID", "TYPE", "STATUS", "DUE", "ATTEMPT", "SERVER", "ERROR", "PARAMS")
OPTIONAL_COLUMNS = {"priority": "PRIORITY", "dedupe_key": "DEDUPE KEY"}
SCHEDULE_COLUMNS = ("NAME", "QUEUE", "TYPE", "WHEN", "TIMEZONE", "ENABLED", "NEXT FIRE", "LAST FIRE")
BAR_WIDTH = 30


def dispatch(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if args.command == "status":
        return status.run(config.load(args.config), out, err, as_json=args.json)
    with Client(args.config) as client:
        if args.command == "queues":
            return queues(client, args, out)
        if args.command == "schedules":
            return schedules(client, args, out, err)
        return TASK_ACTIONS[args.action](client, args, out, err)


def emit_json(data: Any, out: TextIO) -> None:
    out.write(ujson.dumps(jsonable(data), ensure_ascii=False, escape_forward_slashes=False, indent=2) + "\n")


# --- queues and schedules ----------------------------------------------------------


def queues(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    rows = client.queues()
    if args.json:
        emit_json(rows, out)
        return OK
    lines = status.table(
        status.QUEUE_COLUMNS, [status.queue_cells(row) for row in rows], status.QUEUE_NUMBERS
    )
    out.write("\n".join(lines if rows else ["no queues: queue_configs is empty"]) + "\n")
    return OK


def schedules(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    rows = client.schedules()
    if rows is None:
        # A database no executor has started on yet: the CLI never creates tables.
        print(
            "geventq schedules: this database has no schedules table yet "
            "(an executor creates it at start-up: run `geventq run` once against this database)",
            file=err,
        )
        return DATABASE_FAILED
    if args.json:
        emit_json(rows, out)
        return OK
    cells = [
        [
            str(row.get("name")),
            str(row.get("queue_name")),
            str(row.get("task_type")),
            row.get("cron") or f"every {row.get('interval_seconds')}s",
            str(row.get("timezone") or "UTC"),
            "yes" if row.get("status") == 1 else "no",
            _when(row.get("next_fire_at")),
            _when(row.get("last_fire_at")),
        ]
        for row in rows
    ]
    lines = status.table(SCHEDULE_COLUMNS, cells, frozenset())
    out.write("\n".join(lines if rows else ["no schedules"]) + "\n")
    return OK


# --- tasks ---------------------------------------------------------------------------


def tasks_list(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    wanted = None if args.status is None else STATUS_BY_NAME[args.status]
    page = client.list_tasks(args.queue, wanted, args.task_type, args.limit, args.offset)
    if args.json:
        emit_json(page, out)
        return OK
    rows = page["items"]
    extra = [column for column in OPTIONAL_COLUMNS if rows and column in rows[0]]
    headers = (*TASK_COLUMNS[:4], *(OPTIONAL_COLUMNS[column] for column in extra), *TASK_COLUMNS[4:])
    cells = [_task_cells(row, extra) for row in rows]
    lines = status.table(headers, cells, frozenset({"ID", "PRIORITY"})) if rows else ["no tasks"]
    if page["next_offset"] is not None:
        lines.append(f"  more: --offset {page['next_offset']}")
    out.write("\n".join(lines) + "\n")
    return OK


def tasks_get(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    row = client.get(args.queue, args.id)
    if row is None:
        raise TaskNotFound(f"id: queue {args.queue} has no task with id {args.id}")
    if args.json:
        emit_json(row, out)
        return OK
    shown = jsonable(row)
    shown["status"] = f"{row['status']} ({STATUS_NAMES.get(row['status'], '?')})"
    width = max(len(key) for key in shown)
    for key, value in shown.items():
        text = ujson.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        out.write(f"{key.ljust(width)}  {'-' if text is None else text}\n")
    return OK


def tasks_enqueue(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    params = sys.stdin.read() if args.params == "-" else args.params
    task_id = client.enqueue(
        args.queue,
        args.task_type,
        params,
        at=_parse_at(args.at),
        delay=args.delay,
        max_retries=args.max_retries,
        priority=args.priority,
        dedupe_key=args.dedupe_key,
        concurrency_key=args.concurrency_key,
    )
    if args.json:
        emit_json({"id": int(task_id), "duplicate": task_id.duplicate}, out)
    elif task_id.duplicate:
        out.write(f"task {task_id} holds dedupe_key {args.dedupe_key!r}: nothing enqueued\n")
    else:
        out.write(f"enqueued task {task_id} in {args.queue}\n")
    return OK


def tasks_cancel(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    return _each(args, out, err, lambda task_id: client.cancel(args.queue, task_id), "cancelled")


def tasks_retry(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    ids = list(args.ids)
    if args.queue_option is not None:
        if args.queue is not None:
            ids.insert(0, _task_id_text(args.queue))
        args.queue = args.queue_option
    if args.queue is None:
        raise InvalidTask("queue: name the queue (geventq tasks retry QUEUE ... or --queue QUEUE)")
    if args.status is None:
        if not ids:
            raise InvalidTask("ID: give task ids, or --status failed|cancelled to retry every such task")
        return _each(args, out, err, lambda task_id: client.retry(args.queue, task_id), "pending again")
    if ids:
        raise InvalidTask("--status: give task ids or --status, not both")
    bar = ProgressBar(err, f"retrying {args.status} tasks of {args.queue}")
    report = client.retry_all(args.queue, STATUS_BY_NAME[args.status], args.task_type, progress=bar.update)
    bar.finish(report.retried, report.skipped)
    if args.json:
        emit_json({"retried": report.retried, "skipped": report.skipped}, out)
    else:
        why = "another pending or running task holds their dedupe_key"
        skipped = f" ({report.skipped:,} left {args.status}: {why})" if report.skipped else ""
        out.write(f"{report.retried:,} {args.status} tasks of {args.queue} are pending again{skipped}\n")
    return WRONG_STATUS if report.skipped else OK


TASK_ACTIONS = {
    "list": tasks_list,
    "get": tasks_get,
    "enqueue": tasks_enqueue,
    "cancel": tasks_cancel,
    "retry": tasks_retry,
}


def _each(args: argparse.Namespace, out: TextIO, err: TextIO, act: Any, done: str) -> int:
    """Act on each id; the worst exit code (3 missing, 4 wrong status), each failure on stderr."""
    code, results = OK, []
    for task_id in args.ids:
        try:
            row = act(task_id)
        except (TaskNotFound, TaskStateError) as error:
            print(f"geventq: {error}", file=err)
            code = max(code, NOT_FOUND if isinstance(error, TaskNotFound) else WRONG_STATUS)
            continue
        results.append(row)
        if not args.json:
            out.write(f"task {task_id}: {done}\n")
    if args.json:
        emit_json(results, out)
    return code


class ProgressBar:
    """`[#####.....] 5,000/10,000 50%` redrawn on a terminal; elsewhere a
    line per tenth, so a log shows progress without a line per batch."""

    def __init__(self, err: TextIO, label: str):
        self.err = err
        self.label = label
        self.tty = err.isatty()
        self.shown_tenth = -1

    def update(self, done: int, skipped: int, total: int) -> None:
        handled = done + skipped
        fraction = handled / total if total else 1.0
        if self.tty:
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.err.write(f"\r{self.label} [{bar}] {handled:,}/{total:,} {fraction:4.0%}")
            self.err.flush()
        elif int(fraction * 10) > self.shown_tenth:
            self.shown_tenth = int(fraction * 10)
            self.err.write(f"{self.label}: {handled:,}/{total:,} {fraction:.0%}\n")

    def finish(self, done: int, skipped: int) -> None:
        if self.tty:
            self.err.write("\n")
        elif self.shown_tenth < 0:
            self.err.write(f"{self.label}: nothing to retry\n")


# --- cells ---------------------------------------------------------------------------


def _task_cells(row: dict[str, Any], extra: list[str]) -> list[str]:
    params = row.get("task_params")
    params_text = ujson.dumps(params, ensure_ascii=False) if isinstance(params, (dict, list)) else str(params)
    return [
        str(row["id"]),
        str(row["task_type"]),
        STATUS_NAMES.get(row["status"], str(row["status"])),
        _when(row.get("schedule_time")),
        *("-" if row.get(column) is None else str(row[column]) for column in extra),
        f"{row['retry_count'] + 1}/{row['max_retries'] + 1}",
        str(row.get("server_id") or "-"),
        clip((row.get("error_msg") or "-").replace("\n", " "), 40),
        clip(params_text, 60),
    ]


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "-" if value is None else str(value)


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidTask(f"--at: {text!r} is not 'YYYY-MM-DD HH:MM:SS' or ISO-8601 with an offset") from None


def _task_id_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidTask(f"ID: {text!r} is not a task id") from None

"""`geventq status`: the queues, schedules and servers, read straight from the
database with the admin API's own statements, so it works when no admin is
reachable (or none runs). Plain text, aligned columns; or JSON (--json).
`table` and the cell helpers also draw the other commands' tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

import ujson

from geventq import admin_store, schedule_store, store
from geventq.attempts import Status
from geventq.cadence import Cadence
from geventq.config import Config
from geventq.db import DRIVER_ERRORS, Database, table_problem
from geventq.errors import DatabaseError, InvalidSchedule, NoSuchTable
from geventq.peers import parse_queue_list
from geventq.rows import jsonable

QUEUE_COLUMNS = (
    "QUEUE",
    "TABLE",
    "SERVER",
    "WORKERS",
    "SCAN",
    "ENABLED",
    "PENDING",
    "RUNNING",
    "DONE",
    "FAILED",
    "CANCELLED",
    "OLDEST DUE",
)
SCHEDULE_COLUMNS = (
    "SCHEDULE",
    "QUEUE",
    "TYPE",
    "WHEN",
    "ZONE",
    "ENABLED",
    "NEXT FIRE (UTC)",
    "LAST FIRE (UTC)",
    "LAST TASK",
)
SERVER_COLUMNS = ("SERVER", "HOST", "PID", "STATE", "ALIVE", "HEARTBEAT", "QUEUES", "RUNNING")
# Columns aligned right: the numbers.
QUEUE_NUMBERS = frozenset(
    {"WORKERS", "SCAN", "PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED", "OLDEST DUE"}
)
SERVER_NUMBERS = frozenset({"PID", "HEARTBEAT", "RUNNING"})
COUNTS = tuple(status.label for status in Status)  # a queue's `counts`, in the columns' order


def run(config: Config, out: TextIO = sys.stdout, err: TextIO = sys.stderr, as_json: bool = False) -> int:
    """Print the status (a table, or JSON); 0, or 1 with a message naming
    host:port when the database fails."""
    db = Database(config.database, size=1, name="status")
    try:
        now, queues, schedules, servers = db.call(read_status, config.executor.heartbeat_timeout)
    except DatabaseError as error:
        hint = ""
        if isinstance(error, NoSuchTable):  # no geventq schema here yet
            hint = " (start an executor once: it creates the database and applies init.sql)"
        print(f"geventq status: database {config.database.database} at {db.address}: {error}{hint}", file=err)
        return 1
    finally:
        db.close()
    if as_json:
        for server in servers:
            server["alive"] = bool(server["alive"])
            server["queues"] = parse_queue_list(server.get("queues"))
        document = {"database": config.database.database, "address": db.address, "now": now}
        document |= {"queues": queues, "servers": servers, "schedules": schedules}
        out.write(ujson.dumps(jsonable(document), ensure_ascii=False, escape_forward_slashes=False, indent=2))
        out.write("\n")
    else:
        out.write(render(config, db.address, now, queues, servers, schedules))
    return 0


def read_status(cur, heartbeat_timeout: float) -> tuple[Any, list[dict], list[dict], list[dict]]:
    """The database clock, every queue with its counts, every schedule, every
    server; one connection. (A database made before schedules existed has no
    schedules table until an executor starts on it: none are shown.)"""
    try:
        schedules, _ = schedule_store.schedules_overview(cur)
    except DRIVER_ERRORS as error:
        if table_problem(error) is None:
            raise
        schedules = []
    return (
        store.database_now(cur),
        admin_store.queue_overview(cur),
        schedules,
        admin_store.list_servers(cur, heartbeat_timeout),
    )


def render(
    config: Config,
    address: str,
    now: Any,
    queues: list[dict],
    servers: list[dict],
    schedules: list[dict] | None = None,
) -> str:
    clock = now.strftime("%Y-%m-%d %H:%M:%S") if now is not None else "?"
    lines = [
        f"geventq status: database {config.database.database} at {address}, {clock} (database clock)",
        "",
        f"Queues ({len(queues)})",
    ]
    if queues:
        lines += table(QUEUE_COLUMNS, [queue_cells(queue) for queue in queues], QUEUE_NUMBERS)
        lines += [
            f"  ! {queue['queue_name']}: {queue['table_error']}"
            for queue in queues
            if queue.get("table_error")
        ]
    else:
        lines.append("  none: queue_configs is empty")
    schedules = schedules or []
    enabled = sum(1 for schedule in schedules if int(schedule["status"]) == 1)
    lines += ["", f"Schedules ({enabled} enabled of {len(schedules)})"]
    if schedules:
        lines += table(SCHEDULE_COLUMNS, [schedule_cells(schedule) for schedule in schedules], frozenset())
        lines += [f"  ! {name}: {problem}" for name, problem in schedule_problems(schedules)]
    else:
        lines.append("  none")
    alive = sum(1 for server in servers if server["alive"])
    lines += [
        "",
        f"Servers ({alive} alive of {len(servers)}, "
        f"heartbeat_timeout {config.executor.heartbeat_timeout:g}s)",
    ]
    if servers:
        lines += table(SERVER_COLUMNS, [server_cells(server) for server in servers], SERVER_NUMBERS)
    else:
        lines.append("  none has registered yet")
    return "\n".join(lines) + "\n"


def queue_cells(queue: dict[str, Any]) -> list[str]:
    counts = queue.get("counts")
    return [
        str(queue["queue_name"]),
        str(queue["table_name"]),
        str(queue["server_id"] or "any"),
        str(queue["max_workers"]),
        f"{float(queue['scan_interval']):g}s",
        "yes" if int(queue["status"]) == 1 else "no",
        *(f"{counts[name]:,}" if counts else "?" for name in COUNTS),
        age(queue.get("oldest_pending_age")),
    ]


def schedule_cells(schedule: dict[str, Any]) -> list[str]:
    enabled = int(schedule["status"]) == 1
    status = schedule.get("last_task_status")
    return [
        str(schedule["name"]),
        str(schedule["queue_name"]),
        str(schedule["task_type"]),
        str(schedule["cron"]) if schedule["cron"] else f"every {schedule['interval_seconds']}s",
        "-" if schedule["interval_seconds"] else str(schedule["timezone"]),
        "yes" if enabled else "paused",
        moment(schedule["next_fire_at"]) if enabled else "-",
        moment(schedule["last_fire_at"]),
        "-" if schedule["last_task_id"] is None else f"#{schedule['last_task_id']} {label(status)}",
    ]


def schedule_problems(schedules: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Schedules (written by SQL) that cannot fire, and why."""
    problems = []
    for schedule in schedules:
        try:
            Cadence.of(schedule["cron"], schedule["interval_seconds"], schedule["timezone"])
        except InvalidSchedule as error:
            problems.append((schedule["name"], str(error)))
    return problems


def moment(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def label(status: Any) -> str:
    return Status(int(status)).label if status is not None else "(gone)"


def server_cells(server: dict[str, Any]) -> list[str]:
    return [
        str(server["server_id"]),
        str(server.get("host") or "-"),
        str(server.get("pid") or "-"),
        str(server.get("state") or "-"),
        "yes" if server["alive"] else "no",
        age(server.get("heartbeat_age")),
        ",".join(parse_queue_list(server.get("queues"))) or "-",
        f"{int(server.get('running') or 0):,}",
    ]


def age(seconds: Any) -> str:
    """12.3s, 4m05s, 3h07m, 2d04h; '-' for none."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def table(headers: Sequence[str], rows: list[list[str]], right: frozenset[str]) -> list[str]:
    """Aligned lines, two spaces between columns, indented by two."""
    widths = [max(len(header), *(len(row[index]) for row in rows)) for index, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if header in right else cell.ljust(width)
            for cell, width, header in zip(cells, widths, headers, strict=True)
        ]
        return ("  " + "  ".join(parts)).rstrip()

    return [line(headers), *(line(row) for row in rows)]

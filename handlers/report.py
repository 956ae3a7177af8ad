"""Sample handler "report": a CSV of task counts by queue and status.

task_params (all optional):
    title       letters, digits, `_` or `-`, 1 to 50 characters (default "tasks")
    output_dir  folder for the report (default "reports"); a relative path is
                resolved against the folder of the config file (config.base_dir)

Writes `report-{title}-{YYYYmmdd-HHMMSS}-{task_id}.csv` with the columns
queue_name, table_name, pending, running, done, failed, cancelled, total:
one row per queue in queue_configs, in queue_name order. A queue whose table
no longer exists is skipped with a warning in the job log.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from geventq import Status
from geventq.db import check_table_name, quote_table
from geventq.errors import InvalidIdentifier, PermanentFailure
from geventq.handlers import JobContext, task_handler
from geventq.params import require_object

KNOWN_PARAMS = ("title", "output_dir")
TITLE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# One column per task status, in the enum's order: pending, running, done, failed, cancelled.
STATUS_COLUMNS = {status: status.label for status in Status}
HEADER = ("queue_name", "table_name", *STATUS_COLUMNS.values(), "total")


@dataclass(frozen=True)
class ReportRequest:
    title: str
    output_dir: Path


# --- params ---------------------------------------------------------------------


def parse_report_params(params: Any, base_dir: str) -> ReportRequest:
    """Check task_params; raise PermanentFailure("<field>: <why>") on the first problem."""
    params = require_object(params, KNOWN_PARAMS, allow_null=True)
    title = params.get("title", "tasks")
    if not isinstance(title, str) or not TITLE.match(title):
        raise PermanentFailure(
            f"title: must be 1 to 50 letters, digits, '_' or '-' (it becomes part of the "
            f"file name), got {title!r}"
        )
    output_dir = params.get("output_dir", "reports")
    if not isinstance(output_dir, str) or not output_dir.strip() or "\x00" in output_dir:
        raise PermanentFailure(f"output_dir: must be a non-empty path, got {output_dir!r}")
    # An absolute output_dir replaces base_dir in the join.
    return ReportRequest(title=title, output_dir=Path(base_dir) / output_dir)


# --- counting -------------------------------------------------------------------


def registered_queues(cur: Any) -> list[dict[str, Any]]:
    cur.execute("SELECT queue_name, table_name FROM queue_configs ORDER BY queue_name")
    return list(cur.fetchall())


def table_exists(cur: Any, table_name: str) -> bool:
    """`table` lives in the connection's database, `database.table` in its own."""
    *database, table = check_table_name(table_name)
    cur.execute(
        "SELECT 1 FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND TABLE_NAME = %s",
        (database[0] if database else None, table),
    )
    return cur.fetchone() is not None


def count_by_status(cur: Any, table_name: str, registered: set[str]) -> dict[str, int]:
    """One report row's counts: each known status, and the total of all rows
    (a status outside 0-4, written by hand, still counts in the total)."""
    cur.execute(f"SELECT status, COUNT(*) AS n FROM {quote_table(table_name, registered)} GROUP BY status")
    by_status = {row["status"]: row["n"] for row in cur.fetchall()}
    counts = {name: by_status.get(code, 0) for code, name in STATUS_COLUMNS.items()}
    counts["total"] = sum(by_status.values())
    return counts


def count_all_queues(cur: Any, ctx: JobContext) -> tuple[list[dict[str, Any]], list[str]]:
    """Report rows for every queue, and the names of the queues skipped."""
    queues = registered_queues(cur)
    registered = {queue["table_name"] for queue in queues}
    rows, skipped = [], []
    for queue in queues:
        name, table = queue["queue_name"], queue["table_name"]
        problem = why_not_countable(cur, table)
        if problem:
            ctx.log.warning("queue {}: {}; left out of the report", name, problem)
            skipped.append(name)
            continue
        rows.append({"queue_name": name, "table_name": table, **count_by_status(cur, table, registered)})
    return rows, skipped


def why_not_countable(cur: Any, table_name: str) -> str | None:
    """None when the queue's table can be counted, else the reason."""
    try:
        exists = table_exists(cur, table_name)
    except InvalidIdentifier as error:  # a row written by hand, past the admin's checks
        return str(error)
    return None if exists else f"table {table_name} does not exist"


# --- writing --------------------------------------------------------------------


def report_path(request: ReportRequest, task_id: Any) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return request.output_dir / f"report-{request.title}-{stamp}-{task_id}.csv"


def write_csv_atomically(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write beside the final name, then rename over it: a reader (or a crash)
    sees the whole report or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # mkstemp makes 0600; a report is meant to be read
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=HEADER)
            writer.writeheader()
            writer.writerows(rows)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the rename makes it visible
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --- the handler ----------------------------------------------------------------


@task_handler("report")
def write_task_report(ctx: JobContext) -> dict[str, Any]:
    request = parse_report_params(ctx.params, ctx.config.base_dir)
    with ctx.db.cursor() as cur:
        rows, skipped = count_all_queues(cur, ctx)
    path = report_path(request, ctx.task_id)
    write_csv_atomically(path, rows)
    ctx.log.info("report of {} queues written to {}", len(rows), path)
    return {"path": str(path), "queues": len(rows), "skipped": skipped}

"""Rows as their readers want them: a task with its task_params parsed, and
any row as JSON-ready values (datetimes as text, decimals as numbers). The
admin API, geventq.Client and the command line answer rows the same way."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import ujson


def task_json(row: dict[str, Any]) -> dict[str, Any]:
    """The row with task_params parsed (stored text that is not JSON stays text)."""
    params = row.get("task_params")
    if isinstance(params, str):
        try:
            row["task_params"] = ujson.loads(params)
        except ValueError:
            pass  # stored text that is not JSON is shown as it is
    return row


def jsonable(value: Any) -> Any:
    """Rows as JSON: datetimes as 'YYYY-MM-DD HH:MM:SS.fff', decimals as numbers."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return value

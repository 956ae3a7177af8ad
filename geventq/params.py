"""Helpers for handlers that check their task_params: failures name the
field and raise PermanentFailure, so a task that can never be valid fails
once instead of spending its retries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from geventq.errors import PermanentFailure
from geventq.handlers import SCHEDULE_KEY

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as the task author wrote it."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def require_object(params: Any, known: Iterable[str], *, allow_null: bool = False) -> dict[str, Any]:
    """`params` as a dict with no key outside `known` (a typo is an error,
    not a silently ignored option). `_schedule`, which geventq adds to a
    scheduled task's params, is always allowed."""
    if params is None and allow_null:
        return {}
    if not isinstance(params, dict):
        raise PermanentFailure(f"params: must be a JSON object, got {json_type(params)}")
    known = tuple(known)
    unknown = sorted(set(params) - set(known) - {SCHEDULE_KEY})
    if unknown:
        raise PermanentFailure(f"{unknown[0]}: unknown parameter (expected {', '.join(known)})")
    return params

"""What the admin API accepts, declared once per endpoint.

A spec is a table of fields. The same table checks a request (`parse_query`,
`parse_body`) and describes it in the OpenAPI document (`json_schema`), so
what the API enforces and what it documents cannot drift apart. Every problem
names its field, and all of a request's problems are reported at once.

A field is a name, a kind of value and whether a request may leave it out.
The kinds (integer ranges, strings, choices) are geventq.validation's, shared
with config.json; the few only the API takes (a table name, JSON parameters,
a schedule time) are below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Any

import ujson

from geventq import validation
from geventq.attempts import Status
from geventq.db import check_table_name
from geventq.errors import InvalidIdentifier
from geventq.validation import Kind, Problem, clip, mismatch, named, type_name

MISSING: Any = object()
MAX_TASK_ID = 2**63 - 1
MAX_QUEUE_ID = 2**32 - 1
MAX_OFFSET = 2**53
MAX_BATCH = 10_000
TABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?$"
SERVER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{0,50}$"
# `YYYY-MM-DD HH:MM:SS[.fff]` in the database's time zone, or ISO-8601 with a
# `T` and/or an offset (Z or ±HH:MM); without an offset it is database time.
SCHEDULE_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[ T]([01][0-9]|2[0-3]):[0-5][0-9]"
    r":[0-5][0-9](\.[0-9]{1,6})?(Z|[+-]((0[0-9]|1[0-3]):?[0-5][0-9]|14:?00))?$"
)
_SCHEDULE = re.compile(SCHEDULE_PATTERN)
# How a query string spells an integer: no sign but minus, no spaces, no `_`.
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")
# DATETIME's range; a converted schedule_time must land inside it too.
EARLIEST, LATEST = datetime(1000, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999)


class Invalid(Exception):
    """Input that breaks its spec. `problems` each start with the field name."""

    def __init__(self, problems: list[str], status: int = 400):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.status = status


# --- fields ----------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One named field of a query string or JSON body: the kind of value it
    takes (geventq.validation), and what a request may leave out."""

    name: str
    kind: Kind
    doc: str = ""
    required: bool = False
    default: Any = MISSING
    nullable: bool = False
    # How a query string must spell the value, checked before the kind reads
    # the text: the kind reads numbers as Python does, which allows " 5", "+5" and "5_0".
    text_syntax: re.Pattern[str] | None = None

    def check(self, value: Any) -> Any:
        """The value to use, or Problem."""
        if value is None and self.nullable:
            return None
        return self.kind.check(value)

    def from_text(self, text: str) -> Any:
        """A query-string value, before check()."""
        if self.text_syntax is not None and not self.text_syntax.fullmatch(text):
            raise mismatch(self.kind.expectation(), repr(clip(text)))
        return self.kind.from_text(text)

    def json_schema(self) -> dict[str, Any]:
        schema = self.kind.json_schema()
        if self.doc:
            schema["description"] = self.doc
        if self.default is not MISSING:
            schema["default"] = self.default
        if self.nullable:
            schema["nullable"] = True
        return schema


# Field makers, one per kind of request field, named for what the field takes
# so that a spec reads as a table. `presence` is Field's required, default and
# nullable.


def Integer(
    name: str, doc: str = "", *, minimum: int = 0, maximum: int = 2**31 - 1, **presence: Any
) -> Field:
    kind = validation.Integer(minimum=minimum, maximum=maximum, digit_groups=True)
    return Field(name, kind, doc, text_syntax=_INT_TEXT, **presence)


def Seconds(name: str, doc: str = "", *, minimum: float, maximum: float, **presence: Any) -> Field:
    """A duration in seconds, fractional or whole (a body field)."""
    return Field(
        name, validation.Number(minimum=minimum, maximum=maximum, digit_groups=True), doc, **presence
    )


# An idle queue looks every scan_interval with one indexed read: 20 a second at most.
MIN_SCAN_INTERVAL = 0.05


def Choice(name: str, doc: str = "", *, choices: tuple[int, ...], **presence: Any) -> Field:
    """An integer from a short list (statuses, flags)."""
    return Field(name, validation.OneOf(choices), doc, text_syntax=_INT_TEXT, **presence)


def String(
    name: str,
    doc: str = "",
    *,
    min_length: int = 0,
    max_length: int = 255,
    pattern: str | None = None,
    **presence: Any,
) -> Field:
    return Field(name, StorableString(min_length, max_length, pattern), doc, **presence)


def TableName(name: str, doc: str = "", **presence: Any) -> Field:
    """`table` or `database.table`, never one of geventq's own tables."""
    return Field(name, TableNameString(), doc, **presence)


def JsonParams(name: str, doc: str = "", **presence: Any) -> Field:
    """An object or array, or a JSON text of one; the value is its JSON text."""
    return Field(name, JsonDocument(), doc, **presence)


def Word(name: str, doc: str = "", *, choices: tuple[str, ...], **presence: Any) -> Field:
    """One of a few words (a schedule's policies)."""
    return Field(name, validation.OneOf(choices), doc, **presence)


def ParamsObject(name: str, doc: str = "", **presence: Any) -> Field:
    """A JSON object (or JSON text of one) without the reserved `_schedule` key; its JSON text."""
    return Field(name, ScheduleParams(), doc, **presence)


def ScheduleTime(name: str, doc: str = "", **presence: Any) -> Field:
    """A datetime: naive (the database's time zone) or aware (has an offset)."""
    return Field(name, DateTimeText(), doc, **presence)


# --- kinds of value only the admin API takes --------------------------------------


@dataclass(frozen=True)
class StorableString(validation.String):
    """A string the database can store."""

    def check(self, value: Any) -> str:
        return _check_encodable(super().check(value))


@dataclass(frozen=True)
class TableNameString(StorableString):
    max_length: int | None = 100
    pattern: str | None = TABLE_PATTERN

    def check(self, value: Any) -> str:
        value = super().check(value)
        try:
            check_table_name(value)
        except InvalidIdentifier as error:
            raise Problem(str(error)) from None
        return value


@dataclass(frozen=True)
class JsonDocument(Kind):
    """An object or array, or a JSON text of one; the value used is its JSON text."""

    def expectation(self) -> str:
        return "an object, an array or a JSON text of one"

    def check(self, value: Any) -> str:
        if isinstance(value, str):
            return self._check_text(value)
        if not isinstance(value, (dict, list)):
            raise self._mismatch(type_name(value))
        _check_finite(value)
        return _check_encodable(ujson.dumps(value, ensure_ascii=False))

    def json_schema(self) -> dict[str, Any]:
        return {
            "oneOf": [
                {"type": "object"},
                {"type": "array", "items": {}},
                {"type": "string", "description": "JSON text of an object or array"},
            ]
        }

    @staticmethod
    def _check_text(text: str) -> str:
        try:
            parsed = ujson.loads(text)
        except ValueError as error:
            raise Problem(f"is not valid JSON text: {error}") from None
        if not isinstance(parsed, (dict, list)):
            raise mismatch("a JSON object or array", f"JSON {type_name(parsed)}")
        _check_finite(parsed)
        return _check_encodable(text)


@dataclass(frozen=True)
class ScheduleParams(JsonDocument):
    """A schedule's task_params: an object (or JSON text of one); `_schedule`
    is geventq's, added to each task it creates."""

    def expectation(self) -> str:
        return "an object or a JSON text of one"

    def check(self, value: Any) -> str:
        if not isinstance(value, (dict, str)):
            raise self._mismatch(type_name(value))
        text = super().check(value)
        parsed = ujson.loads(text)
        if not isinstance(parsed, dict):
            raise mismatch(self.expectation(), f"JSON {type_name(parsed)}")
        if "_schedule" in parsed:
            raise Problem("_schedule is reserved: geventq adds it to each task the schedule creates")
        return text

    def json_schema(self) -> dict[str, Any]:
        return {
            "oneOf": [
                {"type": "object", "not": {"required": ["_schedule"]}},
                {"type": "string", "description": "JSON text of an object"},
            ]
        }


@dataclass(frozen=True)
class DateTimeText(Kind):
    """`YYYY-MM-DD HH:MM:SS[.fff]` (the database's time zone) or ISO-8601 with
    an offset; the value used is a datetime, naive or aware."""

    def expectation(self) -> str:
        return (
            "'YYYY-MM-DD HH:MM:SS[.fff]' (database time zone) or ISO-8601 "
            "with an offset such as '2030-01-31T08:00:00+02:00'"
        )

    def check(self, value: Any) -> datetime:
        if not isinstance(value, str) or not _SCHEDULE.fullmatch(value):
            shown = clip(value) if isinstance(value, str) else type_name(value)
            raise self._mismatch(repr(shown))
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as error:
            raise Problem(f"is not a valid date and time: {error}") from None
        if not EARLIEST <= parsed.replace(tzinfo=None) <= LATEST:
            raise Problem("must be between 1000-01-01 and 9999-12-31")
        return parsed

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": SCHEDULE_PATTERN, "example": "2030-01-31 08:00:00"}


@dataclass(frozen=True)
class ColumnChoice(Kind):
    """Optional task-table columns by name, each at most once (queue/create's `columns`)."""

    choices: tuple[str, ...] = ()

    def expectation(self) -> str:
        return "a list of distinct column names from " + ", ".join(self.choices)

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._mismatch(type_name(value))
        unknown = [item for item in value if item not in self.choices]
        if unknown:
            raise Problem(f"unknown column {clip(unknown[0])!r} (choose from {', '.join(self.choices)})")
        if len(set(value)) != len(value):
            raise Problem("names a column twice")
        return tuple(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "array", "uniqueItems": True, "items": {"type": "string", "enum": list(self.choices)}}


def to_database_time(value: datetime | None, utc_offset_seconds: int) -> datetime | None:
    """An aware datetime in the database's time zone (naive ones already are)."""
    if value is None or value.tzinfo is None:
        return value
    try:
        local = value.astimezone(timezone(timedelta(seconds=utc_offset_seconds)))
    except OverflowError:
        local = None
    if local is None or not EARLIEST <= local.replace(tzinfo=None) <= LATEST:
        raise Invalid(["schedule_time: is outside 1000-01-01..9999-12-31 in the database's time zone"])
    return local.replace(tzinfo=None)


# --- specs -------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """The fields of a query string or of a JSON object body."""

    fields: tuple[Field, ...]
    min_fields: int = 0  # a partial update must change something

    @cached_property
    def by_name(self) -> dict[str, Field]:
        return {field.name: field for field in self.fields}

    def partial(self) -> Spec:
        """The same fields, none required and none defaulted, at least one given."""
        return Spec(
            tuple(replace(field, required=False, default=MISSING) for field in self.fields), min_fields=1
        )

    def parse_query(self, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        problems = []
        for name, text in pairs:
            if name in seen:
                problems.append(named(clip(name), "given more than once"))
            seen[name] = text
        values = {}
        for name, text in seen.items():
            field = self.by_name.get(name)
            if field is None:
                problems.append(self._unknown(name))
                continue
            try:
                values[name] = field.check(field.from_text(text))
            except Problem as problem:
                problems.append(named(name, problem))
        return self._complete(values, problems, "", given=seen)

    def parse_object(self, body: Any, prefix: str = "") -> dict[str, Any]:
        where = prefix.rstrip(".") or "body"
        if not isinstance(body, dict):
            raise Invalid([named(where, mismatch("a JSON object", type_name(body)))])
        values, problems = {}, []
        for name, value in body.items():
            field = self.by_name.get(name)
            if field is None:
                problems.append(prefix + self._unknown(name))
                continue
            try:
                values[name] = field.check(value)
            except Problem as problem:
                problems.append(named(prefix + name, problem))
        if len(body) < self.min_fields and not problems:
            problems.append(f"{where}: give at least one of " + ", ".join(self.by_name))
        return self._complete(values, problems, prefix, given=body)

    def _unknown(self, name: str) -> str:
        return named(clip(name), f"unknown field (expected {', '.join(self.by_name)})")

    def _complete(
        self, values: dict[str, Any], problems: list[str], prefix: str, given: dict[str, Any]
    ) -> dict[str, Any]:
        for field in self.fields:
            if field.name in given:
                continue
            if field.required:
                problems.append(f"{prefix}{field.name}: required")
            elif field.default is not MISSING:
                values[field.name] = field.check(field.default)
        if problems:
            raise Invalid(problems)
        return values

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {field.name: field.json_schema() for field in self.fields},
            "additionalProperties": False,
        }
        required = [field.name for field in self.fields if field.required]
        if required:
            schema["required"] = required
        if self.min_fields:
            schema["minProperties"] = self.min_fields
        return schema

    def parameters(self) -> list[dict[str, Any]]:
        """OpenAPI query parameters."""
        return [
            {
                "name": field.name,
                "in": "query",
                "required": field.required,
                "description": field.doc,
                "schema": field.json_schema(),
            }
            for field in self.fields
        ]


@dataclass(frozen=True)
class ListOf:
    """A JSON array of objects of one spec (batch create)."""

    item: Spec
    min_items: int = 1
    max_items: int = MAX_BATCH

    def parse(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise Invalid([named("body", mismatch("a JSON array of task objects", type_name(body)))])
        if not self.min_items <= len(body) <= self.max_items:
            raise Invalid(
                [f"body: must hold {self.min_items} to {self.max_items:,} tasks, got {len(body):,}"]
            )
        items, problems = [], []
        for index, entry in enumerate(body):
            try:
                items.append(self.item.parse_object(entry, prefix=f"[{index}]."))
            except Invalid as invalid:
                problems.extend(invalid.problems)
                if len(problems) >= 20:
                    problems.append("... (first problems only)")
                    break
        if problems:
            raise Invalid(problems)
        return items

    def json_schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "minItems": self.min_items,
            "maxItems": self.max_items,
            "items": self.item.json_schema(),
        }


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise Invalid(["body: required (a JSON document)"])
    try:
        return ujson.loads(raw)
    except ValueError as error:
        raise Invalid([f"body: malformed JSON: {error}"]) from None


# --- helpers -------------------------------------------------------------------


def _check_encodable(text: str) -> str:
    # Lone surrogates survive JSON decoding but not the trip to utf8mb4.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem("must be valid Unicode text (no unpaired surrogates)") from None
    return text


def _check_finite(value: Any) -> None:
    """NaN and Infinity are not JSON, though ujson reads them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise Problem("must not contain NaN or Infinity")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# --- the specs of the admin API ---------------------------------------------------

QUEUE_FIELDS = Spec(
    (
        String("queue_name", "unique name of the queue", required=True, min_length=1, max_length=100),
        TableName(
            "table_name",
            "its task table, `table` or `database.table`; created with the base columns when missing",
            required=True,
        ),
        String(
            "server_id",
            "the one server that runs it; '' = any server",
            default="",
            max_length=50,
            pattern=SERVER_ID_PATTERN,
        ),
        Integer("max_workers", "tasks run at once per server", default=10, minimum=1, maximum=10_000),
        Seconds(
            "scan_interval",
            "seconds between looks for tasks inserted by SQL (fractional, at least 0.05)",
            default=5,
            minimum=MIN_SCAN_INTERVAL,
            maximum=86_400,
        ),
        Choice("status", "1 enabled, 0 disabled", default=1, choices=(0, 1)),
        Integer(
            "task_timeout", "seconds an attempt may run; 0 = no limit", default=0, minimum=0, maximum=86_400
        ),
        Integer(
            "retention_days",
            "days finished tasks are kept; 0 = forever",
            default=0,
            minimum=0,
            maximum=36_500,
        ),
        Integer(
            "global_max_workers",
            "tasks running at once on all servers together; 0 = no cap",
            default=0,
            minimum=0,
            maximum=1_000_000,
        ),
        Integer(
            "rate_limit",
            "task starts in any rate_period seconds, all servers together; 0 = no limit",
            default=0,
            minimum=0,
            maximum=100_000_000,
        ),
        Integer("rate_period", "the rate limit's window, seconds", default=60, minimum=1, maximum=86_400),
        Integer(
            "key_max_workers",
            "running tasks per concurrency_key on all servers together; 0 = no cap "
            "(the task table needs a concurrency_key column; a new table gets one)",
            default=0,
            minimum=0,
            maximum=1_000_000,
        ),
    )
)
QUEUE_CREATE = Spec(
    (
        *QUEUE_FIELDS.fields,
        Field(
            "columns",
            ColumnChoice(("priority", "dedupe_key", "concurrency_key")),
            "optional task-table columns to create the table with: priority (smaller runs first), "
            "dedupe_key (one pending or running task per key), concurrency_key (for key_max_workers; "
            "added anyway when key_max_workers is set); an existing table must have them already",
            default=[],
        ),
    )
)
QUEUE_UPDATE = QUEUE_FIELDS.partial()

TASK_CREATE = Spec(
    (
        String("task_type", "the handler's task type", required=True, min_length=1, max_length=50),
        JsonParams("task_params", "handed to the handler as ctx.params", default={}),
        ScheduleTime("schedule_time", "when it becomes due; default now", default=None, nullable=True),
        Integer("max_retries", "retries after the first attempt", default=3, minimum=0, maximum=100),
        Integer(
            "priority",
            "smaller runs first; needs the table's priority column",
            minimum=-(2**31),
            maximum=2**31 - 1,
        ),
        String(
            "dedupe_key",
            "while a task with this key is pending or running, answer its id (200, duplicate) instead "
            "of adding one; needs the table's dedupe_key column",
            min_length=1,
            max_length=191,
        ),
        String(
            "concurrency_key",
            "the key the queue's key_max_workers counts by; needs the table's concurrency_key column",
            min_length=1,
            max_length=191,
        ),
    )
)
TASK_BATCH = ListOf(TASK_CREATE)

SCHEDULE_FIELDS = Spec(
    (
        String("name", "unique name of the schedule", required=True, min_length=1, max_length=100),
        String(
            "queue_name", "the queue whose table gets the tasks", required=True, min_length=1, max_length=100
        ),
        String("task_type", "the handler's task type", required=True, min_length=1, max_length=50),
        ParamsObject(
            "task_params", "handed to the handler as ctx.params, plus _schedule", default=None, nullable=True
        ),
        Integer("max_retries", "retries after the first attempt", default=3, minimum=0, maximum=100),
        String(
            "cron",
            "5 fields (minute hour day-of-month month day-of-week) or @hourly, @daily, ...; "
            "exactly one of cron and interval_seconds",
            default=None,
            nullable=True,
            min_length=1,
            max_length=100,
        ),
        Integer(
            "interval_seconds",
            "fixed rate: fires at the multiples of this many seconds since 1970-01-01 UTC",
            default=None,
            nullable=True,
            minimum=1,
            maximum=366 * 86_400,
        ),
        String("timezone", "IANA time zone the cron is read in", default="UTC", min_length=1, max_length=64),
        Word(
            "misfire_policy",
            "late fires: skip (none), once (the latest), all (each, up to max_catchup)",
            default="once",
            choices=("skip", "once", "all"),
        ),
        Integer(
            "misfire_grace_seconds",
            "a fire older than this when it is taken is late",
            default=60,
            minimum=1,
            maximum=86_400,
        ),
        Integer(
            "max_catchup",
            "at most this many late fires with misfire_policy all",
            default=100,
            minimum=1,
            maximum=1000,
        ),
        Word(
            "overlap",
            "skip: no task while the previous one is pending or running",
            default="allow",
            choices=("allow", "skip"),
        ),
        Choice("status", "1 enabled, 0 paused", default=1, choices=(0, 1)),
    )
)
SCHEDULE_CREATE = SCHEDULE_FIELDS
SCHEDULE_UPDATE = SCHEDULE_FIELDS.partial()
SCHEDULE_ID = Integer("id", "schedule id", required=True, minimum=1, maximum=MAX_QUEUE_ID)
SCHEDULE_ID_QUERY = Spec((SCHEDULE_ID,))
SCHEDULE_FIRES_QUERY = Spec(
    (SCHEDULE_ID, Integer("limit", "how many fires, newest first", default=50, minimum=1, maximum=1000))
)

QUEUE_ID = Integer("id", "queue id", required=True, minimum=1, maximum=MAX_QUEUE_ID)
TASK_ID = Integer("id", "task id", required=True, minimum=1, maximum=MAX_TASK_ID)
TABLE = TableName("table", "a table_name registered in queue_configs", required=True)

NO_PARAMS = Spec(())
QUEUE_ID_QUERY = Spec((QUEUE_ID,))
TABLE_QUERY = Spec((TABLE,))
TASK_QUERY = Spec((TABLE, TASK_ID))
TASK_LOG_QUERY = Spec(
    (
        TABLE,
        TASK_ID,
        Choice("local", "1: answer from this server's log files only", default=0, choices=(0, 1)),
    )
)
# A task's status as requests give it: plain ints (PyMySQL would quote an
# IntEnum member as text), documented from the enum as "0 pending, 1 running, ...".
TASK_STATUS_CODES = tuple(int(status) for status in Status)
TASK_STATUS_DOC = ", ".join(f"{status:d} {status.label}" for status in Status)
TASK_LIST_QUERY = Spec(
    (
        TABLE,
        Choice("status", TASK_STATUS_DOC, choices=TASK_STATUS_CODES),
        String("task_type", "only tasks of this type", min_length=1, max_length=50),
        Integer("limit", "page size", default=50, minimum=1, maximum=1000),
        Integer(
            "offset",
            "next_offset of the previous page (negative: a keyset cursor, the tasks older "
            "than id -offset; 0 or more: rows to skip)",
            default=0,
            minimum=-MAX_OFFSET,
            maximum=MAX_OFFSET,
        ),
    )
)
THROUGHPUT_QUERY = Spec(
    (
        Integer(
            "minutes", "how many minutes back, the current one included", default=30, minimum=1, maximum=1440
        ),
    )
)


# --- endpoints ---------------------------------------------------------------------

MIB = 1024 * 1024


def ref(name: str) -> dict[str, Any]:
    """A reference to one of the OpenAPI document's component schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


@dataclass(frozen=True)
class Endpoint:
    """One route: what it accepts, what it answers, and which errors it may give."""

    method: str
    path: str
    summary: str
    data: dict[str, Any]  # schema of the envelope's `data` (of the whole body when `raw`)
    tag: str = "admin"
    query: Spec = NO_PARAMS
    body: Spec | ListOf | None = None
    body_limit: int = MIB
    status: int = 200
    errors: tuple[tuple[int, str], ...] = ()  # its own error statuses, and why
    also: tuple[tuple[int, str, dict[str, Any]], ...] = ()  # other success statuses: why, data schema
    auth: bool = True
    uses_database: bool = True
    raw: str | None = None  # the media type of a response that is not the JSON envelope

    def parse_body(self, raw: bytes) -> Any:
        if self.body is None:
            return None
        document = parse_json(raw)
        if isinstance(self.body, ListOf):
            return self.body.parse(document)
        return self.body.parse_object(document)

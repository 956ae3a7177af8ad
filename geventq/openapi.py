"""The OpenAPI 3.0 document of the admin API, built from the same endpoint
and field specs that validate requests (geventq.api_schema)."""

from __future__ import annotations

from typing import Any

from geventq.api_schema import Endpoint, ref

DATETIME = {"type": "string", "description": "YYYY-MM-DD HH:MM:SS.fff, database time zone"}
OPTIONAL_DATETIME = {**DATETIME, "nullable": True}
COUNT = {"type": "integer", "minimum": 0}

COUNTS = {
    "type": "object",
    "description": "tasks by status; null when the table could not be counted",
    "required": ["pending", "running", "done", "failed", "cancelled"],
    "properties": {name: COUNT for name in ("pending", "running", "done", "failed", "cancelled")},
}

QUEUE_ROW = {
    "type": "object",
    "description": "a queue_configs row",
    "required": [
        "id",
        "queue_name",
        "table_name",
        "server_id",
        "max_workers",
        "scan_interval",
        "status",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "queue_name": {"type": "string"},
        "table_name": {"type": "string"},
        "server_id": {"type": "string", "description": "'' = any server"},
        "max_workers": {"type": "integer"},
        "scan_interval": {"type": "number", "description": "seconds"},
        "status": {"type": "integer", "enum": [0, 1]},
        "task_timeout": {"type": "integer"},
        "retention_days": {"type": "integer"},
        "global_max_workers": {"type": "integer", "description": "0 = no cap"},
        "rate_limit": {"type": "integer", "description": "starts per rate_period; 0 = no limit"},
        "rate_period": {"type": "integer"},
        "key_max_workers": {"type": "integer", "description": "0 = no cap"},
        "created_at": DATETIME,
        "updated_at": DATETIME,
    },
}

UTC_DATETIME = {"type": "string", "description": "YYYY-MM-DD HH:MM:SS.fff, UTC"}
OPTIONAL_UTC_DATETIME = {**UTC_DATETIME, "nullable": True}
TASK_STATUS = {
    "type": "integer",
    "nullable": True,
    "enum": [0, 1, 2, 3, 4, None],
    "description": "0 pending, 1 running, 2 done, 3 failed, 4 cancelled; null: no such task (any more)",
}

SCHEDULE = {
    "type": "object",
    "description": "a schedules row, with its next fire times and its cadence in words",
    "required": [
        "id",
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
        "next_fire_at",
        "last_fire_at",
        "last_task_id",
        "last_task_table",
        "last_task_status",
        "next_fires",
        "description",
        "error",
        "created_at",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "name": {"type": "string"},
        "queue_name": {"type": "string"},
        "task_type": {"type": "string"},
        "task_params": {"nullable": True, "description": "a JSON object, or null"},
        "max_retries": {"type": "integer"},
        "cron": {"type": "string", "nullable": True},
        "interval_seconds": {"type": "integer", "nullable": True},
        "timezone": {"type": "string"},
        "misfire_policy": {"type": "string", "enum": ["skip", "once", "all"]},
        "misfire_grace_seconds": {"type": "integer"},
        "max_catchup": {"type": "integer"},
        "overlap": {"type": "string", "enum": ["allow", "skip"]},
        "status": {"type": "integer", "enum": [0, 1], "description": "1 enabled, 0 paused"},
        "next_fire_at": OPTIONAL_UTC_DATETIME,
        "last_fire_at": {**OPTIONAL_UTC_DATETIME, "description": "the fire time of its latest task"},
        "last_task_id": {"type": "integer", "nullable": True},
        "last_task_table": {"type": "string", "nullable": True},
        "last_task_status": TASK_STATUS,
        "next_fires": {
            "type": "array",
            "maxItems": 5,
            "items": UTC_DATETIME,
            "description": "the next five fire times (while paused: what resuming now would give)",
        },
        "description": {"type": "string", "nullable": True, "description": "the cadence in words"},
        "error": {
            "type": "string",
            "nullable": True,
            "description": "why a schedule written by SQL cannot fire",
        },
        "created_at": DATETIME,
        "updated_at": DATETIME,
    },
}

SCHEDULE_FIRE = {
    "type": "object",
    "description": "a schedule_fires row (the ledger)",
    "required": ["schedule_id", "fire_at", "task_table", "task_id", "outcome"],
    "properties": {
        "schedule_id": {"type": "integer", "minimum": 1},
        "fire_at": UTC_DATETIME,
        "task_table": {"type": "string"},
        "task_id": {"type": "integer", "nullable": True},
        "outcome": {"type": "string", "enum": ["enqueued", "skipped_overlap", "missed"]},
        "task_status": TASK_STATUS,
        "created_at": DATETIME,
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["code", "message", "data"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "integer", "minimum": 400, "maximum": 599, "description": "the HTTP status"},
            "message": {"type": "string", "description": "why; names the field at fault"},
            "data": {"nullable": True, "enum": [None]},
        },
    },
    "QueueRow": QUEUE_ROW,
    "Queue": {
        "allOf": [
            ref("QueueRow"),
            {
                "type": "object",
                "required": ["counts", "oldest_pending_age", "table_error"],
                "properties": {
                    "counts": {**COUNTS, "nullable": True},
                    "oldest_pending_age": {
                        "type": "number",
                        "nullable": True,
                        "minimum": 0,
                        "description": "seconds since the oldest due pending task "
                        "was due, by the database clock",
                    },
                    "table_error": {
                        "type": "string",
                        "nullable": True,
                        "description": "why the task table could not be counted",
                    },
                    "held_back": {
                        "type": "object",
                        "nullable": True,
                        "description": "due tasks the latest claim left pending, by limit "
                        "(global, rate, key, paused), and paused_until; null for a queue "
                        "that never had a limit or a pause",
                    },
                },
            },
        ],
    },
    "Throughput": {
        "type": "object",
        "required": ["now", "minutes", "queues"],
        "properties": {
            "now": {"type": "string", "description": "the current minute, YYYY-MM-DD HH:MM"},
            "minutes": {"type": "integer"},
            "queues": {
                "type": "object",
                "additionalProperties": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["minute", "done", "failed"],
                        "properties": {"minute": {"type": "string"}, "done": COUNT, "failed": COUNT},
                    },
                },
            },
        },
    },
    "Checked": {
        "type": "object",
        "required": ["checked"],
        "properties": {"checked": {"type": "boolean"}},
    },
    "Woken": {
        "type": "object",
        "required": ["table", "woken"],
        "properties": {
            "table": {"type": "string"},
            "woken": {"type": "boolean", "description": "this server runs that queue"},
        },
    },
    "Server": {
        "type": "object",
        "required": [
            "server_id",
            "host",
            "pid",
            "admin_address",
            "started_at",
            "last_heartbeat",
            "state",
            "queues",
            "running",
            "alive",
            "heartbeat_age",
        ],
        "properties": {
            "server_id": {"type": "string"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "admin_address": {"type": "string"},
            "version": {"type": "string"},
            "started_at": DATETIME,
            "last_heartbeat": DATETIME,
            "state": {"type": "string"},
            "queues": {"type": "array", "items": {"type": "string"}},
            "running": COUNT,
            "alive": {
                "type": "boolean",
                "description": "heartbeat within executor.heartbeat_timeout and not offline",
            },
            "heartbeat_age": {"type": "number", "nullable": True},
            "db_node": {"type": "string", "description": "host:port of the database node it uses"},
        },
    },
    "Task": {
        "type": "object",
        "required": [
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
        ],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "task_type": {"type": "string"},
            "task_params": {
                "nullable": True,
                "description": "parsed JSON; the raw text if it does not parse",
            },
            "status": {
                "type": "integer",
                "enum": [0, 1, 2, 3, 4],
                "description": "0 pending, 1 running, 2 done, 3 failed, 4 cancelled",
            },
            "schedule_time": DATETIME,
            "start_time": OPTIONAL_DATETIME,
            "end_time": OPTIONAL_DATETIME,
            "retry_count": {"type": "integer"},
            "max_retries": {"type": "integer"},
            "error_msg": {"type": "string", "nullable": True},
            "server_id": {"type": "string", "description": "the server of the latest attempt"},
            "created_at": DATETIME,
            "updated_at": DATETIME,
        },
    },
    "TaskPage": {
        "type": "object",
        "required": ["items", "next_offset"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": ref("Task")},
            "next_offset": {
                "type": "integer",
                "nullable": True,
                "description": "pass back as offset for the next page; null at the end",
            },
        },
    },
    "CancelRequested": {
        "type": "object",
        "required": ["cancel_requested", "server_id"],
        "properties": {
            "cancel_requested": {"type": "boolean", "enum": [True]},
            "server_id": {"type": "string", "description": "the server running the task"},
            "task": ref("Task"),
        },
    },
    "TaskCreated": {
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "duplicate": {
                "type": "boolean",
                "description": "true (HTTP 200): nothing was created; id is the pending or running "
                "task that holds the dedupe_key",
            },
        },
    },
    "TasksCreated": {
        "type": "object",
        "required": ["ids", "count"],
        "properties": {
            "ids": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "count": {"type": "integer", "minimum": 1},
            "duplicates": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "description": "positions in ids of tasks not created because a pending or running "
                "task holds their dedupe_key (its id is given)",
            },
        },
    },
    "TaskLog": {
        "type": "object",
        "required": ["log_id", "server_id", "source", "log", "truncated"],
        "properties": {
            "log_id": {"type": "string", "description": "{table_name}-{id}"},
            "server_id": {"type": "string", "description": "the server that ran the latest attempt"},
            "source": {
                "type": "string",
                "enum": ["local", "remote"],
                "description": "read here, or fetched from that server",
            },
            "log": {"type": "string"},
            "truncated": {"type": "boolean", "description": "only the end of a very long log"},
        },
    },
    "Schedule": SCHEDULE,
    "ScheduleFire": SCHEDULE_FIRE,
    "Health": {
        "type": "object",
        "required": ["server_id", "db_rtt_ms"],
        "properties": {
            "server_id": {"type": "string"},
            "db_rtt_ms": {"type": "number", "minimum": 0},
            "db_node": {"type": "string", "description": "host:port of the database node this server uses"},
        },
    },
}

ERRORS = {
    400: "invalid input: malformed JSON, a missing, unknown or wrongly typed field, a value out of "
    "range; the message names the field",
    401: "admin.token is set and the request has no `Authorization: Bearer <token>` with it",
    413: "the body is larger than the limit",
    500: "unexpected error; the detail is in the executor log",
    503: "the database is unavailable or busy",
}


def document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "geventq admin API",
            "version": version,
            "description": "Every JSON response is the envelope {code, message, data}: code 0 with "
            "HTTP 200/201 on success, the HTTP status on error (data null).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required on /admin/ when admin.token is set",
                }
            },
        },
    }


def operation(endpoint: Endpoint) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.path.strip("/").replace("/", "_").replace(".", "_") or "dashboard",
        "tags": [endpoint.tag],
        "parameters": parameters(endpoint),
        "responses": responses(endpoint),
    }
    if endpoint.body is not None:
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body.json_schema()}},
        }
    spec["security"] = [{"bearerAuth": []}, {}] if endpoint.auth else []
    return spec


def parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    found = endpoint.query.parameters()
    for parameter in found:
        if "{" + parameter["name"] + "}" in endpoint.path:
            parameter["in"], parameter["required"] = "path", True
    return found


def responses(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.raw:
        success = {"description": "success", "content": {endpoint.raw: {"schema": endpoint.data}}}
    else:
        success = {
            "description": "success",
            "content": {"application/json": {"schema": envelope_of(endpoint.data)}},
        }
    answers = {str(endpoint.status): success}
    for status, description, data in endpoint.also:
        answers[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": envelope_of(data)}},
        }
    errors = dict(endpoint.errors)
    if endpoint.query.fields or endpoint.body is not None:
        errors.setdefault(400, ERRORS[400])
    if endpoint.auth:
        errors.setdefault(401, ERRORS[401])
    if endpoint.body is not None:
        errors.setdefault(413, ERRORS[413])
    errors.setdefault(500, ERRORS[500])
    if endpoint.uses_database:
        errors.setdefault(503, ERRORS[503])
    for status in sorted(errors):
        answers[str(status)] = {
            "description": errors[status],
            "content": {"application/json": {"schema": ref("Error")}},
        }
    return answers


def envelope_of(data: dict[str, Any]) -> dict[str, Any]:
    """The success envelope around a `data` schema."""
    return {
        "type": "object",
        "required": ["code", "message", "data"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "integer", "enum": [0]},
            "message": {"type": "string", "enum": ["success"]},
            "data": data,
        },
    }

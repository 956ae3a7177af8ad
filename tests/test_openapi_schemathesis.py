"""Schemathesis against a live executor, driven by its own /admin/openapi.json.

Every operation gets a bounded number of generated requests, valid ones
(positive) and, where it has parameters or a body, invalid ones (negative).
Each response must not be a 5xx, must match the documented status codes,
content types and schemas, and an invalid request must be rejected with a
4xx. Afterwards, nothing the requests did not address may have changed:
queue rows, task rows, schedule rows and their fires, tables, databases and
the servers table are compared with snapshots taken before, allowing only
what successful requests did.
"""

from __future__ import annotations

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from geventq import Status

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as sc  # noqa: E402

EXAMPLES = int(os.environ.get("GEVENTQ_SCHEMATHESIS_EXAMPLES", "25"))
FUZZ_QUEUE_ID, UNTOUCHED_QUEUE_ID = 2_000_000_001, 2_000_000_002
FUZZ_SCHEDULE_ID, UNTOUCHED_SCHEDULE_ID = 2_000_000_011, 2_000_000_012
# Valid cadences a request is steered to half the time, so schedule writes
# reach the database instead of stopping at "cron: ...".
CADENCES = [
    {"cron": "*/5 * * * *", "interval_seconds": None, "timezone": "Europe/Berlin"},
    {"cron": "@daily", "interval_seconds": None, "timezone": "UTC"},
    {"cron": None, "interval_seconds": 3600},
    None,
    None,
]
POSITIVE_CHECKS = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
]
NEGATIVE_CHECKS = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
    sc.negative_data_rejection,
]
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def table_checksum(db, table: str) -> int:
    return db.query(f"CHECKSUM TABLE {table}")[0]["Checksum"]


def snapshot(db, other_db: str) -> dict:
    return {
        "queues": {row["id"]: row for row in db.query("SELECT * FROM queue_configs")},
        "tables": {
            row["t"]
            for row in db.query(
                "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
        },
        "databases": {row["Database"] for row in db.query("SHOW DATABASES")},
        "fuzz_tasks": {row["id"]: row for row in db.query("SELECT * FROM fuzz_tasks")},
        "checksums": {
            table: table_checksum(db, table)
            for table in (
                "untouched_tasks",
                "executions",
                f"`{other_db}`.servers",
                f"`{other_db}`.untouched_tasks",
            )
        },
        "other_tables": {
            row["t"]
            for row in db.query(
                "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = %s", (other_db,)
            )
        },
        "servers": db.query("SELECT server_id, host, pid, admin_address, started_at FROM servers"),
        "schedules": {row["id"]: row for row in db.query("SELECT * FROM schedules")},
        "fires": collections.Counter(
            row["schedule_id"] for row in db.query("SELECT schedule_id FROM schedule_fires")
        ),
    }


@pytest.fixture
def other_db(db):
    """A second database with a `servers` table and a task table, never addressed."""
    name = f"{db.name}_other"
    db.execute(f"CREATE DATABASE `{name}`")
    db.execute(f"CREATE TABLE `{name}`.servers LIKE servers")
    db.execute(f"INSERT INTO `{name}`.servers (server_id, host) VALUES ('x', 'y')")
    db.execute(f"CREATE TABLE `{name}`.untouched_tasks LIKE email_tasks")
    db.execute(f"INSERT INTO `{name}`.untouched_tasks (task_type, task_params) VALUES ('noop', '{{}}')")
    yield name
    db.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_schemathesis_finds_no_errors_and_touches_nothing_else(db, executors, other_db):
    # Given a live executor that runs no queues (so only requests change task
    # tables), a queue the fuzzer is steered to, and one it never addresses
    for queue_id, name in ((FUZZ_QUEUE_ID, "fuzz"), (UNTOUCHED_QUEUE_ID, "untouched")):
        db.execute(f"CREATE TABLE {name}_tasks LIKE email_tasks")
        db.execute(
            "INSERT INTO queue_configs (id, queue_name, table_name) VALUES (%s, %s, %s)",
            (queue_id, f"{name}_queue", f"{name}_tasks"),
        )
        for status in (*Status, Status.PENDING, Status.FAILED, Status.CANCELLED):
            db.execute(
                f"INSERT INTO {name}_tasks (task_type, task_params, status) "
                "VALUES ('noop', '{\"k\": 1}', %s)",
                (int(status),),
            )
    for schedule_id, name in ((FUZZ_SCHEDULE_ID, "fuzz"), (UNTOUCHED_SCHEDULE_ID, "untouched")):
        db.execute(
            "INSERT INTO schedules (id, name, queue_name, task_type, cron) "
            "VALUES (%s, %s, %s, 'noop', '@hourly')",
            (schedule_id, f"{name}_schedule", f"{name}_queue"),
        )
    process = executors.start(queue={"enable": False})
    base_url = process.admin_url
    schema = schemathesis.openapi.from_url(f"{base_url}/admin/openapi.json")
    before = snapshot(db, other_db)
    fuzz_ids = sorted(before["fuzz_tasks"])

    # When every operation is fuzzed
    calls: list[dict] = []
    failures: list[str] = []
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        has_input = bool(operation.query or operation.path_parameters or operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not has_input:
                continue
            try:
                fuzz(operation, mode, base_url, fuzz_ids, calls, stats[f"{label} [{mode.value}]"])
            except Exception as error:  # noqa: BLE001 - collect them all, report at the end
                failures.append(f"{label} [{mode.value}]: {str(error)[:3000]}")

    summary = "\n".join(f"  {name}: {dict(sorted(counts.items()))}" for name, counts in sorted(stats.items()))
    print(
        f"\nschemathesis {schemathesis.__version__}: {len(operations)} operations, "
        f"{sum(sum(c.values()) for c in stats.values())} requests\n{summary}"
    )

    # Then no check failed
    assert not failures, "\n\n".join(failures)
    # And nothing changed that no successful request addressed
    after = snapshot(db, other_db)
    assert_only_addressed_changes(before, after, calls)


def fuzz(
    operation, mode, base_url: str, fuzz_ids: list[int], calls: list[dict], statuses: collections.Counter
) -> None:
    positive = mode is GenerationMode.POSITIVE
    checks = POSITIVE_CHECKS if positive else NEGATIVE_CHECKS

    @HYPOTHESIS
    @given(
        case=operation.as_strategy(generation_mode=mode),
        table=st.sampled_from(["fuzz_tasks", None, "fuzz_tasks", "email_tasks"]),
        task_id=st.sampled_from([*reversed(fuzz_ids), None]),
        queue_id=st.sampled_from([1, 2, 3, None]),
        schedule_id=st.sampled_from([FUZZ_SCHEDULE_ID, 1, None]),
        cadence=st.sampled_from(CADENCES),
    )
    def run(case, table, task_id, queue_id, schedule_id, cadence):
        # Valid requests are steered to real queues and tasks most of the
        # time, so they reach the database instead of stopping at a 404 (never
        # to the fuzz and untouched queues' rows, which must stay as they are).
        query = case.query if positive and isinstance(case.query, dict) else {}
        if "table" in query and table:
            query["table"] = table
            if "id" in query and task_id:
                query["id"] = task_id
        elif "id" in query and case.path.startswith("/admin/schedule/"):
            # deletes only ever reach the sample schedule: the fuzz one stays for the rest
            if schedule_id:
                query["id"] = 1 if case.path == "/admin/schedule/delete" else schedule_id
        elif "id" in query and queue_id:
            query["id"] = queue_id
        if positive and case.path.startswith("/admin/schedule/") and isinstance(case.body, dict):
            steer_schedule(case.body, cadence)
        response = case.call(base_url=base_url)
        statuses[response.status_code] += 1
        calls.append(
            {
                "method": case.method.upper(),
                "path": case.path,
                "query": dict(case.query or {}),
                "body": case.body,
                "status": response.status_code,
                "json": _json(response),
            }
        )
        case.validate_response(response, checks=checks)

    run()


def steer_schedule(body: dict, cadence: dict | None) -> None:
    """A schedule body aimed at the fuzz queue, with a valid cadence half the time."""
    if "queue_name" in body:
        body["queue_name"] = "fuzz_queue"
    if cadence is not None and ("cron" in body or "interval_seconds" in body or "name" in body):
        body.update(cadence)


def _table_names(call: dict) -> list[str]:
    values = [call["query"].get("table")]
    if isinstance(call["body"], dict):
        values.append(call["body"].get("table_name"))
    return [value for value in values if isinstance(value, str)]


def _json(response):
    try:
        return response.json()
    except ValueError:
        return None


def assert_only_addressed_changes(before: dict, after: dict, calls: list[dict]) -> None:
    ok = [call for call in calls if 200 <= call["status"] < 300]
    queue_ids_addressed = {
        call["query"].get("id")
        for call in ok
        if call["path"] in ("/admin/queue/update", "/admin/queue/delete")
    }
    created = [call["json"]["data"] for call in ok if call["path"] == "/admin/queue/create"]
    renamed = [call["json"]["data"] for call in ok if call["path"] == "/admin/queue/update"]
    new_tables_allowed = {row["table_name"] for row in created + renamed}

    for queue_id, row in before["queues"].items():
        if queue_id not in queue_ids_addressed:
            assert after["queues"].get(queue_id) == row, f"queue {queue_id} changed unaddressed"
    created_ids = {row["id"] for row in created}
    for queue_id in set(after["queues"]) - set(before["queues"]):
        assert queue_id in created_ids, f"queue {queue_id} appeared without a create"
    assert before["tables"] <= after["tables"], "a table was dropped"
    unexplained = after["tables"] - before["tables"] - new_tables_allowed
    assert not unexplained, f"tables appeared without a queue create: {unexplained}"

    task_ids_addressed = {
        call["query"].get("id")
        for call in ok
        if call["query"].get("table") == "fuzz_tasks"
        and call["path"] in ("/admin/task/retry", "/admin/task/cancel")
    }
    fuzz_created = {
        call["json"]["data"]["task_id"]
        for call in ok
        if call["path"] == "/admin/schedule/run" and call["json"]["data"]["task_table"] == "fuzz_tasks"
    }
    for call in ok:
        if call["query"].get("table") == "fuzz_tasks":
            data = call["json"]["data"]
            if call["path"] == "/admin/task/create":
                fuzz_created.add(data["id"])
            elif call["path"] == "/admin/task/batch_create":
                fuzz_created.update(data["ids"])
    for task_id, row in before["fuzz_tasks"].items():
        if task_id not in task_ids_addressed:
            assert after["fuzz_tasks"][task_id] == row, f"fuzz task {task_id} changed unaddressed"
    assert set(after["fuzz_tasks"]) - set(before["fuzz_tasks"]) == fuzz_created

    assert_only_addressed_schedule_changes(before, after, ok)
    assert after["checksums"] == before["checksums"]
    # No database named in a request appeared (other tests may come and go meanwhile).
    named = {value.split(".")[0] for call in calls for value in _table_names(call) if "." in value}
    assert not (after["databases"] - before["databases"]) & named
    assert after["other_tables"] == before["other_tables"]
    assert after["servers"] == before["servers"]
    assert json.dumps(after["servers"], default=str)  # rows are comparable


def assert_only_addressed_schedule_changes(before: dict, after: dict, ok: list[dict]) -> None:
    changing = (
        "/admin/schedule/update",
        "/admin/schedule/delete",
        "/admin/schedule/pause",
        "/admin/schedule/resume",
    )
    addressed = {call["query"].get("id") for call in ok if call["path"] in changing}
    created = {call["json"]["data"]["id"] for call in ok if call["path"] == "/admin/schedule/create"}
    for schedule_id, row in before["schedules"].items():
        if schedule_id not in addressed:
            assert after["schedules"].get(schedule_id) == row, f"schedule {schedule_id} changed unaddressed"
    assert set(after["schedules"]) - set(before["schedules"]) <= created, (
        "a schedule appeared without a create"
    )
    assert UNTOUCHED_SCHEDULE_ID in after["schedules"]
    # The executor fires nothing (queue.enable is false): every new ledger row is a manual run.
    runs = collections.Counter(
        call["query"].get("id") for call in ok if call["path"] == "/admin/schedule/run"
    )
    assert after["fires"] - before["fires"] == runs

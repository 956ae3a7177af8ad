"""The admin API over real HTTP against real executor processes on MariaDB.

One database and a few executors serve the whole module:
- `server` (server-a) runs every open queue; its config sync interval is
  30 s, so anything that takes effect before that was applied at once by the
  admin that received it;
- `server_b` runs only the queue pinned to it, with its own log folder;
- `guarded` runs no queues and has an admin token.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.parse

import pytest

from geventq import Status, admin_store, config, store
from geventq.db import Database, quote_table
from tests.faultproxy import FaultProxy
from tests.support import ExecutorProcess, TestDatabase, http, wait_for, write_config

TOKEN = "t0ken-for-tests"
MIB = 1024 * 1024
PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_db(mariadb):
    database = TestDatabase().create()
    # A queue that never runs anywhere: its table only changes through requests.
    database.add_queue("quiet_queue", "quiet_tasks", status=0)
    yield database
    database.drop()


@pytest.fixture(scope="module")
def cluster(api_db, tmp_path_factory):
    started: list[ExecutorProcess] = []
    directory = tmp_path_factory.mktemp("admin")

    def start(server_id: str, **sections) -> ExecutorProcess:
        sections.setdefault("log", {"dir": str(directory / f"logs-{server_id}")})
        process = ExecutorProcess(write_config(directory, api_db, **sections), api_db, server_id)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def server(cluster):
    return cluster("server-a", queue={"config_sync_interval": 30})


@pytest.fixture(scope="module")
def url(server):
    return server.admin_url


@pytest.fixture(scope="module")
def server_b(cluster, server):
    return cluster("server-b")


@pytest.fixture(scope="module")
def guarded(cluster, server):
    return cluster("server-guarded", admin={"token": TOKEN}, queue={"enable": False})


def call(base: str, method: str, path: str, body=None, headers=None, **query):
    target = f"{base}{path}"
    if query:
        target += "?" + urllib.parse.urlencode(query)
    return http(method, target, body=body, headers=headers)


def ok(response, status=200):
    code, body = response
    assert code == status, body
    assert body["code"] == 0 and body["message"] == "success", body
    return body["data"]


def error(response, status, *words):
    code, body = response
    assert code == status, body
    assert body == {"code": status, "message": body["message"], "data": None}, body
    for word in words:
        assert word in body["message"], body["message"]
    return body["message"]


def checksum(db, table: str):
    return db.query(f"CHECKSUM TABLE {table}")[0]["Checksum"]


@contextlib.contextmanager
def unchanged(db, *tables):
    """Asserts that the queue rows, the set of tables and `tables` are as before."""

    def state():
        return (
            db.query("SELECT * FROM queue_configs ORDER BY id"),
            sorted(
                row["t"]
                for row in db.query(
                    "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
                )
            ),
            [checksum(db, table) for table in tables],
        )

    before = state()
    yield
    assert state() == before


def queue_by_name(url, name):
    queues = ok(call(url, "GET", "/admin/queue/list"))
    return next((queue for queue in queues if queue["queue_name"] == name), None)


def runs_queue(url, server_id, queue_name):
    servers = ok(call(url, "GET", "/admin/server/list"))
    return any(row["server_id"] == server_id and queue_name in row["queues"] for row in servers)


# --- health, documents, dashboard -----------------------------------------------------------


def test_healthz_answers_server_id_and_database_rtt(url):
    data = ok(call(url, "GET", "/healthz"))
    assert data["server_id"] == "server-a"
    assert 0 <= data["db_rtt_ms"] < 1000


def test_healthz_is_503_within_seconds_when_the_database_is_silent(cluster, api_db):
    with FaultProxy() as proxy:
        process = cluster("server-proxied", database={"port": proxy.port}, queue={"enable": False})
        base = process.admin_url
        ok(call(base, "GET", "/healthz"))
        # When the database stops answering (a partition: silence, no error)
        proxy.set_mode("blackhole")
        started = time.monotonic()
        message = error(call(base, "GET", "/healthz"), 503, "database unavailable")
        # Then the probe hears so within its budget, and all is well once it is back
        assert time.monotonic() - started < 4, message
        proxy.set_mode("drop")
        wait_for(lambda: call(base, "GET", "/healthz")[0] == 200, timeout=10, message="healthy again")
        process.stop()


def test_openapi_document_lists_every_endpoint_of_the_design(url):
    status, doc = call(url, "GET", "/admin/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.0")
    from openapi_spec_validator import validate

    validate(doc)
    operations = {(method.upper(), path) for path, item in doc["paths"].items() for method in item}
    for expected in [
        ("POST", "/admin/queue/create"),
        ("GET", "/admin/queue/list"),
        ("PUT", "/admin/queue/update"),
        ("DELETE", "/admin/queue/delete"),
        ("GET", "/admin/server/list"),
        ("POST", "/admin/task/create"),
        ("GET", "/admin/task/list"),
        ("GET", "/admin/task/get"),
        ("POST", "/admin/task/retry"),
        ("POST", "/admin/task/cancel"),
        ("POST", "/admin/task/batch_create"),
        ("GET", "/admin/task/log"),
        ("GET", "/admin/openapi.json"),
        ("GET", "/healthz"),
        ("GET", "/"),
    ]:
        assert expected in operations
    create = doc["paths"]["/admin/queue/create"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert body["properties"]["max_workers"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10000,
        "description": "tasks run at once per server",
        "default": 10,
    }
    assert {"201", "400", "409", "413", "500"} <= set(create["responses"])


def test_dashboard_and_static_files_are_served_without_auth(url, guarded):
    for base in (url, guarded.admin_url):
        status, text = call(base, "GET", "/")
        assert status == 200 and "<html" in text.lower()
        status, _ = call(base, "GET", "/static/dashboard.js")
        assert status == 200
    error(call(url, "GET", "/static/nope.js"), 404)
    error(call(url, "GET", "/static/..%2Finit.sql"), 400, "filename")
    assert call(url, "GET", "/static/../README.md")[0] in (400, 404)


# --- queues -----------------------------------------------------------------------------


def test_queue_create_list_update_delete_round_trip(url, api_db):
    # When a queue is created for a table that does not exist yet
    row = ok(
        call(
            url,
            "POST",
            "/admin/queue/create",
            {
                "queue_name": "rt_queue",
                "table_name": "rt_tasks",
                "max_workers": 3,
                "scan_interval": 7,
                "task_timeout": 60,
            },
        ),
        201,
    )
    # Then it answers the row, and the table has the base columns
    assert row["queue_name"] == "rt_queue" and row["table_name"] == "rt_tasks"
    assert (row["server_id"], row["max_workers"], row["scan_interval"], row["status"]) == ("", 3, 7, 1)
    assert row["task_timeout"] == 60 and row["retention_days"] == 0
    columns = {
        r["c"]
        for r in api_db.query(
            "SELECT column_name AS c FROM information_schema.columns WHERE table_schema = DATABASE() "
            "AND table_name = 'rt_tasks'"
        )
    }
    assert columns >= set(admin_store.TASK_BASE_COLUMNS)
    # And the server that received it runs it at once (its own sync interval is 30 s)
    wait_for(lambda: runs_queue(url, "server-a", "rt_queue"), timeout=5, message="rt_queue running")

    # And list shows it with counts and the age of its oldest due pending task
    api_db.execute(
        "INSERT INTO rt_tasks (task_type, status, schedule_time) VALUES "
        "('x', 0, NOW(3) - INTERVAL 90 SECOND), ('x', 2, NOW(3)), ('x', 4, NOW(3)), "
        "('x', 0, NOW(3) + INTERVAL 1 HOUR)"
    )
    listed = queue_by_name(url, "rt_queue")
    # Finished rows written by SQL are history, not outcomes geventq recorded:
    # the totals come from the outcome counters (queue_minute_counts).
    assert listed["counts"] == {"pending": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    assert 89 < listed["oldest_pending_age"] < 150
    assert listed["table_error"] is None

    # When it is updated partially
    updated = ok(call(url, "PUT", "/admin/queue/update", {"status": 0, "max_workers": 4}, id=row["id"]))
    assert (updated["status"], updated["max_workers"], updated["scan_interval"]) == (0, 4, 7)
    # Then the change takes effect at once on this server
    wait_for(lambda: not runs_queue(url, "server-a", "rt_queue"), timeout=5, message="rt_queue stopped")

    # When it is deleted
    deleted = ok(call(url, "DELETE", "/admin/queue/delete", id=row["id"]))
    assert deleted["id"] == row["id"]
    # Then the row is gone but the table stays
    assert queue_by_name(url, "rt_queue") is None
    assert api_db.scalar("SELECT COUNT(*) FROM rt_tasks") == 4
    error(call(url, "DELETE", "/admin/queue/delete", id=row["id"]), 404, "id")
    error(call(url, "PUT", "/admin/queue/update", {"status": 1}, id=row["id"]), 404, "id")


def test_queue_create_takes_an_existing_table_with_the_base_columns(url, api_db):
    api_db.execute("CREATE TABLE own_tasks LIKE email_tasks")
    api_db.execute("INSERT INTO own_tasks (task_type) VALUES ('noop')")
    row = ok(
        call(
            url, "POST", "/admin/queue/create", {"queue_name": "own", "table_name": "own_tasks", "status": 0}
        ),
        201,
    )
    assert api_db.scalar("SELECT COUNT(*) FROM own_tasks") == 1
    ok(call(url, "DELETE", "/admin/queue/delete", id=row["id"]))


def test_queue_create_refuses_duplicates_and_unfit_tables_without_half_writes(url, api_db):
    api_db.execute("CREATE TABLE thin_table (id INT PRIMARY KEY, task_type VARCHAR(50))")
    with unchanged(api_db, "email_tasks"):
        # A duplicate queue_name with a new table: 409, and no table is left behind
        error(
            call(
                url, "POST", "/admin/queue/create", {"queue_name": "email_queue", "table_name": "never_made"}
            ),
            409,
            "queue_name",
        )
        # A duplicate table_name (the unique key ignores case, so does the check)
        error(
            call(url, "POST", "/admin/queue/create", {"queue_name": "fresh", "table_name": "EMAIL_TASKS"}),
            409,
            "table_name",
        )
        error(
            call(url, "POST", "/admin/queue/create", {"queue_name": "fresh", "table_name": "thin_table"}),
            400,
            "table_name",
            "lacks the base task columns",
        )
        error(
            call(url, "POST", "/admin/queue/create", {"queue_name": "fresh", "table_name": "nodb_x.t"}),
            400,
            "table_name",
            "does not exist",
        )
        error(
            call(url, "POST", "/admin/queue/create", {"queue_name": "fresh", "table_name": "mysql.t"}),
            400,
            "table_name",
            "system database",
        )
        # Renaming onto another queue's names: 409 as well
        quiet = queue_by_name(url, "quiet_queue")
        error(
            call(url, "PUT", "/admin/queue/update", {"queue_name": "email_queue"}, id=quiet["id"]),
            409,
            "queue_name",
        )
        error(
            call(url, "PUT", "/admin/queue/update", {"table_name": "email_tasks"}, id=quiet["id"]),
            409,
            "table_name",
        )


def test_queue_update_to_a_new_table_creates_it(url, api_db):
    row = ok(
        call(url, "POST", "/admin/queue/create", {"queue_name": "mv", "table_name": "mv_tasks", "status": 0}),
        201,
    )
    moved = ok(call(url, "PUT", "/admin/queue/update", {"table_name": "mv_tasks_2"}, id=row["id"]))
    assert moved["table_name"] == "mv_tasks_2"
    assert api_db.scalar("SELECT COUNT(*) FROM mv_tasks_2") == 0
    ok(call(url, "DELETE", "/admin/queue/delete", id=row["id"]))


def test_server_list_shows_liveness_queues_and_running_counts(url, server):
    servers = ok(call(url, "GET", "/admin/server/list"))
    me = next(row for row in servers if row["server_id"] == "server-a")
    assert me["alive"] is True and me["state"] == "online"
    assert me["pid"] == server.process.pid and me["admin_address"] == url.removeprefix("http://")
    assert 0 <= me["heartbeat_age"] < 3
    assert "email_queue" in me["queues"] and isinstance(me["running"], int)
    assert me["started_at"] and me["last_heartbeat"]


def test_server_list_marks_a_silent_server_dead(url, api_db):
    api_db.execute(
        "INSERT INTO servers (server_id, host, pid, admin_address, started_at, last_heartbeat, "
        "state, queues, running) VALUES ('ghost', 'h', 1, '127.0.0.1:1', "
        "NOW(3) - INTERVAL 1 HOUR, NOW(3) - INTERVAL 1 HOUR, 'online', 'not json', 0)"
    )
    ghost = next(row for row in ok(call(url, "GET", "/admin/server/list")) if row["server_id"] == "ghost")
    assert ghost["alive"] is False and ghost["heartbeat_age"] > 3000 and ghost["queues"] == []
    api_db.execute("DELETE FROM servers WHERE server_id = 'ghost'")


# --- tasks ------------------------------------------------------------------------------------


def test_task_create_get_list_cancel_retry_round_trip(url, api_db):
    table = "quiet_tasks"  # a disabled queue: tasks stay as the API leaves them
    first = ok(
        call(
            url,
            "POST",
            "/admin/task/create",
            {"task_type": "noop", "task_params": {"to": ["a"]}},
            table=table,
        ),
        201,
    )["id"]
    second = ok(
        call(
            url,
            "POST",
            "/admin/task/create",
            {
                "task_type": "other",
                "task_params": '{"n": 2}',
                "schedule_time": "2030-01-31 08:00:00",
                "max_retries": 0,
            },
            table=table,
        ),
        201,
    )["id"]
    third = ok(
        call(
            url,
            "POST",
            "/admin/task/create",
            {"task_type": "noop", "task_params": [1, 2], "schedule_time": "2030-01-31T08:00:00.250Z"},
            table=table,
        ),
        201,
    )["id"]

    task = ok(call(url, "GET", "/admin/task/get", table=table, id=first))
    assert task["task_params"] == {"to": ["a"]} and task["status"] == PENDING
    assert task["max_retries"] == 3 and task["retry_count"] == 0
    assert len(task["schedule_time"]) == len("2030-01-31 08:00:00.000")
    assert api_db.task(table, first)["task_params"] == '{"to":["a"]}'
    second_row = ok(call(url, "GET", "/admin/task/get", table=table, id=second))
    assert second_row["task_params"] == {"n": 2} and second_row["max_retries"] == 0
    assert second_row["schedule_time"] == "2030-01-31 08:00:00.000"
    # ISO-8601 with an offset lands in the database's time zone
    offset = api_db.scalar("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW())")
    stored = api_db.task(table, third)["schedule_time"]
    assert (stored - api_db.scalar("SELECT TIMESTAMP('2030-01-31 08:00:00.250')")).total_seconds() == offset

    # list: newest first, filters, pages
    page = ok(call(url, "GET", "/admin/task/list", table=table, limit=2))
    # next_offset is a keyset cursor (minus the last id shown); a row count still skips rows
    assert [item["id"] for item in page["items"]] == [third, second] and page["next_offset"] == -second
    rest = ok(call(url, "GET", "/admin/task/list", table=table, limit=2, offset=page["next_offset"]))
    assert [item["id"] for item in rest["items"]] == [first] and rest["next_offset"] is None
    skipped = ok(call(url, "GET", "/admin/task/list", table=table, limit=2, offset=2))
    assert [item["id"] for item in skipped["items"]] == [first] and skipped["next_offset"] is None
    typed = ok(call(url, "GET", "/admin/task/list", table=table, task_type="other", status=PENDING))
    assert [item["id"] for item in typed["items"]] == [second]

    # cancel: pending to cancelled, then 409
    cancelled = ok(call(url, "POST", "/admin/task/cancel", table=table, id=second))
    assert cancelled["status"] == CANCELLED and cancelled["end_time"] is not None
    error(call(url, "POST", "/admin/task/cancel", table=table, id=second), 409, "cancelled", "id")
    # retry: cancelled or failed back to pending with a fresh budget; pending is 409
    api_db.execute(
        f"UPDATE {table} SET status = {FAILED:d}, retry_count = 3, error_msg = 'x', "
        "end_time = NOW(3) WHERE id = %s",
        (first,),
    )
    for task_id in (first, second):
        retried = ok(call(url, "POST", "/admin/task/retry", table=table, id=task_id))
        assert (retried["status"], retried["retry_count"], retried["error_msg"], retried["end_time"]) == (
            PENDING,
            0,
            None,
            None,
        )
    error(call(url, "POST", "/admin/task/retry", table=table, id=first), 409, "pending")
    # a running task gets a cancel request for its owner: 202, and again 202 (the
    # row is marked running by hand: server-a runs nothing of it, so nothing stops)
    api_db.execute(f"UPDATE {table} SET status = {RUNNING:d}, server_id = 'server-a' WHERE id = %s", (third,))
    for _ in range(2):
        status, body = call(url, "POST", "/admin/task/cancel", table=table, id=third)
        assert status == 202 and body["data"]["cancel_requested"] is True
        assert body["data"]["server_id"] == "server-a" and body["data"]["task"]["status"] == RUNNING
    assert api_db.query("SELECT table_name, task_id, server_id FROM task_cancels") == [
        {"table_name": table, "task_id": third, "server_id": "server-a"}
    ]
    api_db.execute(f"UPDATE {table} SET status = {DONE:d} WHERE id = %s", (third,))
    error(call(url, "POST", "/admin/task/cancel", table=table, id=third), 409, "done")
    # unknown ids
    for path in ("/admin/task/get", "/admin/task/retry", "/admin/task/cancel", "/admin/task/log"):
        method = "GET" if path.endswith(("get", "log")) else "POST"
        error(call(url, method, path, table=table, id=999999), 404, "id")


def test_batch_create_inserts_all_in_one_statement_or_nothing(url, api_db):
    table = "quiet_tasks"
    tasks = [{"task_type": "noop", "task_params": {"i": i}} for i in range(500)]
    data = ok(call(url, "POST", "/admin/task/batch_create", tasks, table=table), 201)
    assert data["count"] == 500 and len(set(data["ids"])) == 500
    rows = api_db.query(f"SELECT id, task_params FROM {table} WHERE id IN %s", (data["ids"],))
    params = {row["id"]: json.loads(row["task_params"])["i"] for row in rows}
    assert [params[task_id] for task_id in data["ids"]] == list(range(500))

    with unchanged(api_db, table):
        bad = [*tasks[:3], {"task_type": "noop", "max_retries": 101}, {"task_typ": "x"}]
        error(
            call(url, "POST", "/admin/task/batch_create", bad, table=table),
            400,
            "[3].max_retries",
            "[4].task_typ",
            "[4].task_type: required",
        )
        error(call(url, "POST", "/admin/task/batch_create", [], table=table), 400, "body")
        error(
            call(url, "POST", "/admin/task/batch_create", [{"task_type": "n"}] * 10_001, table=table),
            400,
            "10,000",
        )
        error(call(url, "POST", "/admin/task/batch_create", {"task_type": "n"}, table=table), 400, "array")
        big = b"[" + b" " * (16 * MIB) + b"]"
        error(call(url, "POST", "/admin/task/batch_create", big, table=table), 413, "16 MiB")


def test_batch_ids_without_returning_are_read_back_in_a_snapshot(api_db, tmp_path):
    # MySQL has no INSERT … RETURNING; the fallback must give the same ids.
    database = Database(config.load(write_config(tmp_path, api_db), environ={}).database, size=1)
    tasks = [
        {"task_type": "noop", "task_params": f'{{"j": {j}}}', "schedule_time": None, "max_retries": 1}
        for j in range(50)
    ]
    table = quote_table("quiet_tasks", None)
    try:
        ids = database.call(admin_store.insert_tasks, table, tasks, False, 16 * MIB, snapshot=True)
        with pytest.raises(admin_store.StatementTooLarge):
            database.call(admin_store.insert_tasks, table, tasks, True, 100, snapshot=True)
    finally:
        database.close()
    rows = api_db.query("SELECT id, task_params FROM quiet_tasks WHERE id IN %s ORDER BY id", (ids,))
    assert [json.loads(row["task_params"])["j"] for row in rows] == list(range(50))


def test_task_log_is_read_where_the_task_ran(url, api_db):
    created = ok(call(url, "POST", "/admin/task/create", {"task_type": "record"}, table="email_tasks"), 201)
    wait_for(lambda: api_db.task("email_tasks", created["id"])["status"] == DONE, message="done")
    log = wait_for(
        lambda: (
            (data := ok(call(url, "GET", "/admin/task/log", table="email_tasks", id=created["id"])))[
                "log"
            ].count("done in")
            and data
        )
    )
    assert log["source"] == "local" and log["server_id"] == "server-a"
    assert log["log_id"] == f"email_tasks-{created['id']}" and "recorded run" in log["log"]


def test_throughput_counts_finished_tasks_per_minute(url, api_db):
    # Outcomes as the recorder and the rescue count them (store.count_outcomes):
    # this minute's, and two hours ago's, which a 5-minute chart leaves out.
    # Finished rows alone are not read: the one inserted by SQL is not counted.
    api_db.execute("INSERT INTO report_tasks (task_type, status, end_time) VALUES ('x', 2, NOW(3))")
    with api_db.connect() as conn, conn.cursor() as cur:
        store.count_outcomes(cur, "report_tasks", "server-a", {Status.DONE: 2})
        store.count_outcomes(cur, "report_tasks", "server-b", {Status.FAILED: 1, Status.CANCELLED: 4})
        cur.execute(
            "INSERT INTO queue_minute_counts (table_name, minute, writer, done) "
            "VALUES ('report_tasks', DATE_FORMAT(NOW() - INTERVAL 2 HOUR, '%Y-%m-%d %H:%i:00'), '', 7)"
        )
    data = ok(call(url, "GET", "/admin/queue/throughput", minutes=5))
    series = data["queues"]["report_queue"]
    assert len(series) == 5 and series[-1]["minute"] == data["now"]
    assert sum(point["done"] for point in series) == 2 and sum(p["failed"] for p in series) == 1
    assert ok(call(url, "GET", "/admin/queue/throughput"))["minutes"] == 30
    assert (
        sum(
            p["done"]
            for p in ok(call(url, "GET", "/admin/queue/throughput", minutes=180))["queues"]["report_queue"]
        )
        == 9
    )
    listed = queue_by_name(url, "report_queue")["counts"]
    assert (listed["done"], listed["failed"], listed["cancelled"]) == (9, 1, 4)


# --- validation ---------------------------------------------------------------------------------

BAD_TASK_BODIES = [
    (b'{"task_type": "noop"', "body", "malformed JSON"),
    (b"", "body", "required"),
    (b"[1]", "body", "object"),
    ({}, "task_type", "required"),
    ({"task_type": 5}, "task_type", "string"),
    ({"task_type": ""}, "task_type", "1 to 50"),
    ({"task_type": "x" * 51}, "task_type", "1 to 50"),
    ({"task_type": "n", "max_retries": "3"}, "max_retries", "integer"),
    ({"task_type": "n", "max_retries": 101}, "max_retries", "0 to 100"),
    ({"task_type": "n", "max_retries": -1}, "max_retries", "0 to 100"),
    ({"task_type": "n", "max_retries": 2.5}, "max_retries", "integer"),
    ({"task_type": "n", "max_retries": True}, "max_retries", "boolean"),
    ({"task_type": "n", "task_params": 5}, "task_params", "object"),
    ({"task_type": "n", "task_params": "[1,"}, "task_params", "JSON"),
    ({"task_type": "n", "task_params": "5"}, "task_params", "object or array"),
    (b'{"task_type": "n", "task_params": {"x": NaN}}', "task_params", "NaN"),
    ({"task_type": "n", "schedule_time": "tomorrow"}, "schedule_time", "YYYY-MM-DD"),
    ({"task_type": "n", "schedule_time": "2030-02-30 00:00:00"}, "schedule_time", "day"),
    ({"task_type": "n", "schedule_time": "0999-01-01 00:00:00"}, "schedule_time", "1000-01-01"),
    ({"task_type": "n", "schedule_time": 1700000000}, "schedule_time", "YYYY-MM-DD"),
    ({"task_type": "n", "colour": "red"}, "colour", "unknown field"),
]


@pytest.mark.parametrize(("body", "field", "why"), BAD_TASK_BODIES)
def test_bad_task_bodies_are_400_naming_the_field(url, api_db, body, field, why):
    with unchanged(api_db, "quiet_tasks"):
        message = error(call(url, "POST", "/admin/task/create", body, table="quiet_tasks"), 400, why)
    assert message.startswith(field + ":") or f"; {field}:" in message


BAD_QUEUE_BODIES = [
    ({"table_name": "t1"}, "queue_name", "required"),
    ({"queue_name": "q1"}, "table_name", "required"),
    ({"queue_name": "q1", "table_name": "t1", "max_workers": 0}, "max_workers", "1 to 10,000"),
    ({"queue_name": "q1", "table_name": "t1", "max_workers": 10_001}, "max_workers", "1 to 10,000"),
    ({"queue_name": "q1", "table_name": "t1", "scan_interval": 0.04}, "scan_interval", "0.05 to 86,400"),
    ({"queue_name": "q1", "table_name": "t1", "scan_interval": 86_401}, "scan_interval", "0.05 to 86,400"),
    ({"queue_name": "q1", "table_name": "t1", "scan_interval": "1"}, "scan_interval", "number"),
    ({"queue_name": "q1", "table_name": "t1", "status": 2}, "status", "0, 1"),
    ({"queue_name": "q1", "table_name": "t1", "task_timeout": 86_401}, "task_timeout", "0 to 86,400"),
    ({"queue_name": "q1", "table_name": "t1", "retention_days": -1}, "retention_days", "0 to 36,500"),
    ({"queue_name": "q1", "table_name": "t1", "server_id": "a b"}, "server_id", "matching"),
    ({"queue_name": "x" * 101, "table_name": "t1"}, "queue_name", "1 to 100"),
    ({"queue_name": "q1", "table_name": "t1", "id": 5}, "id", "unknown field"),
    ({"queue_name": None, "table_name": "t1"}, "queue_name", "null"),
]


@pytest.mark.parametrize(("body", "field", "why"), BAD_QUEUE_BODIES)
def test_bad_queue_bodies_are_400_naming_the_field(url, api_db, body, field, why):
    with unchanged(api_db):
        message = error(call(url, "POST", "/admin/queue/create", body), 400, why)
    assert message.startswith(field + ":") or f"; {field}:" in message


def test_bad_queue_updates_and_ids(url, api_db):
    quiet = queue_by_name(url, "quiet_queue")
    with unchanged(api_db):
        error(call(url, "PUT", "/admin/queue/update", {}, id=quiet["id"]), 400, "at least one")
        error(call(url, "PUT", "/admin/queue/update", {"bogus": 1}, id=quiet["id"]), 400, "bogus")
        error(call(url, "PUT", "/admin/queue/update", {"max_workers": 0}, id=quiet["id"]), 400, "max_workers")
        error(call(url, "PUT", "/admin/queue/update", {"status": 1}), 400, "id: required")
        error(call(url, "PUT", "/admin/queue/update", {"status": 1}, id="abc"), 400, "id")
        error(call(url, "PUT", "/admin/queue/update", {"status": 1}, id=0), 400, "id")
        error(call(url, "PUT", "/admin/queue/update", {"status": 1}, id=4_000_000), 404, "id")
        error(call(url, "DELETE", "/admin/queue/delete", id=4_000_000), 404, "id")
        error(call(url, "DELETE", "/admin/queue/delete"), 400, "id")


@pytest.mark.parametrize(
    ("path", "query", "why"),
    [
        ("/admin/task/list", {"table": "quiet_tasks", "limit": 0}, "limit"),
        ("/admin/task/list", {"table": "quiet_tasks", "limit": 1001}, "limit"),
        ("/admin/task/list", {"table": "quiet_tasks", "offset": "1.5"}, "offset"),
        ("/admin/task/list", {"table": "quiet_tasks", "offset": -(2**53) - 1}, "offset"),
        ("/admin/task/list", {"table": "quiet_tasks", "status": 5}, "status"),
        ("/admin/task/list", {"table": "quiet_tasks", "status": "done"}, "status"),
        ("/admin/task/list", {"table": "quiet_tasks", "task_type": ""}, "task_type"),
        ("/admin/task/list", {"table": "quiet_tasks", "sort": "id"}, "sort: unknown field"),
        ("/admin/task/list", {}, "table: required"),
        ("/admin/task/get", {"table": "quiet_tasks"}, "id: required"),
        ("/admin/task/get", {"table": "quiet_tasks", "id": "1 OR 1=1"}, "id"),
        ("/admin/task/get", {"table": "quiet_tasks", "id": "9" * 30}, "id"),
        ("/admin/queue/throughput", {"minutes": 0}, "minutes"),
        ("/admin/queue/throughput", {"minutes": 1441}, "minutes"),
    ],
)
def test_bad_query_parameters_are_400_naming_them(url, path, query, why):
    error(call(url, "GET", path, **query), 400, why)


def test_repeated_query_parameters_are_400(url):
    error(http("GET", f"{url}/admin/task/get?table=quiet_tasks&id=1&id=2"), 400, "id: given more than once")


def test_bodies_over_one_mib_are_413_and_nothing_is_written(url, api_db):
    just_right = b'{"task_type": "noop"}'.ljust(MIB)
    over = just_right + b" "
    with unchanged(api_db, "quiet_tasks"):
        error(call(url, "POST", "/admin/task/create", over, table="quiet_tasks"), 413, "1 MiB")
        error(call(url, "POST", "/admin/queue/create", over), 413)
        error(call(url, "PUT", "/admin/queue/update", over, id=1), 413)
    ok(call(url, "POST", "/admin/task/create", just_right, table="quiet_tasks"), 201)


def test_unknown_paths_and_wrong_methods_answer_in_the_envelope(url):
    error(call(url, "GET", "/admin/nothing"), 404, "no such endpoint")
    error(call(url, "GET", "/nothing/at/all"), 404)
    message = error(call(url, "GET", "/admin/queue/create"), 405, "GET")
    assert "POST" in message
    error(call(url, "POST", "/admin/queue/list"), 405)
    error(call(url, "DELETE", "/admin/task/get", table="quiet_tasks", id=1), 405)


INJECTIONS = [
    "email_tasks; DROP TABLE queue_configs",
    "email_tasks`; DROP TABLE queue_configs; --",
    "`email_tasks`",
    "email tasks",
    "email_tasks ",
    "a" * 300,
    "x" * 64 + "y",
    "queue_configs",
    "servers",
    "otherdb.servers",
    "OtherDB.Queue_Configs",
    "a.b.c",
    "../email_tasks",
    "email_tasks--",
    "email_tasks/*",
    "1email_tasks",
    "émail_tasks",
    "email_tasks\x00",
    "",
]


@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_attempts_in_table_names_are_refused_and_change_nothing(url, api_db, name):
    with unchanged(api_db, "email_tasks", "quiet_tasks"):
        for method, path, body in (
            ("POST", "/admin/task/create", {"task_type": "noop"}),
            ("POST", "/admin/task/batch_create", [{"task_type": "noop"}]),
            ("GET", "/admin/task/list", None),
            ("GET", "/admin/task/get", None),
            ("POST", "/admin/task/cancel", None),
            ("POST", "/admin/task/retry", None),
            ("GET", "/admin/task/log", None),
            ("POST", "/admin/queue/wake", None),
        ):
            query = (
                {"table": name}
                if path
                in ("/admin/task/create", "/admin/task/batch_create", "/admin/task/list", "/admin/queue/wake")
                else {"table": name, "id": 1}
            )
            status, body_out = call(url, method, path, body, **query)
            assert status in (400, 404), (path, name, status, body_out)
            assert body_out["data"] is None and "table" in body_out["message"]
        status, body_out = call(url, "POST", "/admin/queue/create", {"queue_name": "inj", "table_name": name})
        assert status == 400, body_out
        assert "table_name" in body_out["message"]


# --- errors nobody expected -------------------------------------------------------------


def test_an_unexpected_error_is_a_500_envelope_with_the_detail_in_the_log(url, api_db, server):
    # A registered table whose task_type column cannot take the value: the
    # INSERT fails in a way no validation foresees.
    api_db.execute("CREATE TABLE odd_tasks LIKE email_tasks")
    api_db.execute("ALTER TABLE odd_tasks MODIFY task_type INT NOT NULL")
    api_db.add_queue("odd_queue", "odd_tasks", status=0)
    message = error(
        call(url, "POST", "/admin/task/create", {"task_type": "not-a-number"}, table="odd_tasks"),
        500,
        "internal server error",
    )
    assert "Traceback" not in message and "odd_tasks" not in message
    wait_for(
        lambda: "admin POST /admin/task/create failed" in server.output,
        timeout=5,
        message="the failure in the executor log",
    )
    assert "Incorrect integer value" in server.output


# --- auth --------------------------------------------------------------------------------


def test_auth_with_a_token(guarded):
    base = guarded.admin_url
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        error(call(base, "GET", "/admin/queue/list", headers=headers), 401, "Bearer")
        error(
            call(
                base, "POST", "/admin/task/create", {"task_type": "n"}, headers=headers, table="quiet_tasks"
            ),
            401,
        )
    # unknown /admin paths do not tell what exists without the token
    error(call(base, "GET", "/admin/secret"), 401)
    error(call(base, "GET", "/admin/openapi.json"), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    ok(call(base, "GET", "/admin/queue/list", headers=good))
    assert call(base, "GET", "/admin/openapi.json", headers=good)[0] == 200
    assert ok(call(base, "GET", "/healthz"))["server_id"] == "server-guarded"


def test_no_token_means_no_auth(url):
    ok(call(url, "GET", "/admin/queue/list", headers={"Authorization": "Bearer anything"}))
    ok(call(url, "GET", "/admin/queue/list"))


# --- wake-ups and other servers --------------------------------------------------------------------


def pickup_seconds(api_db, table: str, task_id: int) -> float:
    return float(
        api_db.scalar(
            "SELECT TIMESTAMPDIFF(MICROSECOND, t.created_at, e.started_at) / 1e6 FROM executions e "
            f"JOIN {table} t ON t.id = e.task_id WHERE e.table_name = %s AND e.task_id = %s",
            (table, task_id),
        )
    )


def started(api_db, table: str, task_id: int) -> bool:
    return bool(
        api_db.scalar(
            "SELECT COUNT(*) FROM executions WHERE table_name = %s AND task_id = %s", (table, task_id)
        )
    )


def test_task_create_wakes_the_local_scanner(url, api_db):
    # Given a queue scanned every 30 s, running here and idle after its first scan
    ok(
        call(
            url,
            "POST",
            "/admin/queue/create",
            {"queue_name": "slow_queue", "table_name": "slow_tasks", "scan_interval": 30},
        ),
        201,
    )
    wait_for(lambda: runs_queue(url, "server-a", "slow_queue"), timeout=5, message="slow_queue running")
    time.sleep(0.5)
    # When tasks are created through the API, one at a time
    latencies = []
    for _ in range(10):
        task_id = ok(
            call(url, "POST", "/admin/task/create", {"task_type": "record"}, table="slow_tasks"), 201
        )["id"]
        # Then each starts well before the next scan
        wait_for(
            lambda task_id=task_id: started(api_db, "slow_tasks", task_id),
            timeout=2,
            message="task started after create",
        )
        latencies.append(pickup_seconds(api_db, "slow_tasks", task_id))
    # And so do tasks of a batch
    ids = ok(
        call(url, "POST", "/admin/task/batch_create", [{"task_type": "record"}] * 5, table="slow_tasks"), 201
    )["ids"]
    wait_for(
        lambda: all(started(api_db, "slow_tasks", task_id) for task_id in ids),
        timeout=2,
        message="batch started",
    )
    print(f"\nlocal pickup after task/create: max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 1.0


def test_task_create_wakes_the_server_that_runs_the_queue_and_its_log_is_fetched_from_it(
    url, api_db, server_b
):
    # Given a queue pinned to server B, scanned every 30 s
    ok(
        call(
            url,
            "POST",
            "/admin/queue/create",
            {"queue_name": "b_queue", "table_name": "b_tasks", "server_id": "server-b", "scan_interval": 30},
        ),
        201,
    )
    wait_for(lambda: runs_queue(url, "server-b", "b_queue"), timeout=5, message="server B runs b_queue")
    time.sleep(1.2)  # A's cached view of the servers table catches up
    # When a task is created through server A's API
    latencies = []
    for _ in range(5):
        task_id = ok(call(url, "POST", "/admin/task/create", {"task_type": "record"}, table="b_tasks"), 201)[
            "id"
        ]
        # Then server B starts it at once
        wait_for(
            lambda task_id=task_id: started(api_db, "b_tasks", task_id),
            timeout=2,
            message="task started on server B",
        )
        latencies.append(pickup_seconds(api_db, "b_tasks", task_id))
    assert api_db.task("b_tasks", task_id)["server_id"] == "server-b"
    print(f"\nremote pickup after task/create: max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 1.0
    wait_for(lambda: api_db.task("b_tasks", task_id)["status"] == DONE, message="done on B")

    # And its log, written on B only, is fetched through A
    def fetched():
        data = ok(call(url, "GET", "/admin/task/log", table="b_tasks", id=task_id))
        return "done in" in data["log"] and data

    log = wait_for(fetched, timeout=5, message="log fetched from B")
    assert log["source"] == "remote" and log["server_id"] == "server-b"
    assert "recorded run" in log["log"] and "on server-b" in log["log"]
    local = ok(call(url, "GET", "/admin/task/log", table="b_tasks", id=task_id, local=1))
    assert local["source"] == "local" and local["log"] == ""


def test_wake_endpoint_answers_whether_this_server_runs_the_queue(url):
    assert ok(call(url, "POST", "/admin/queue/wake", table="email_tasks")) == {
        "table": "email_tasks",
        "woken": True,
    }
    assert ok(call(url, "POST", "/admin/queue/wake", table="quiet_tasks"))["woken"] is False
    error(call(url, "POST", "/admin/queue/wake", table="nope_tasks"), 404, "table")

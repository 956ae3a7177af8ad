"""The schedule endpoints of the admin API (DESIGN.md, "Recurring tasks"),
over real HTTP against real executors: `firing` fires schedules, `admin_only`
(queue.enable false) only answers requests, so an edit made through it can
only reach `firing` through the database."""

from __future__ import annotations

import itertools
import re
import time
import urllib.parse
from datetime import datetime, timedelta

import pytest

from tests.support import ExecutorProcess, TestDatabase, http, wait_for, write_config

UTC_TEXT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


@pytest.fixture(scope="module")
def api_db(mariadb):
    database = TestDatabase().create()
    database.add_queue("sq", "sched_tasks", scan_interval=1)
    database.add_queue("quiet", "quiet_tasks", status=0)
    yield database
    database.drop()


@pytest.fixture(scope="module")
def servers(api_db, tmp_path_factory):
    directory = tmp_path_factory.mktemp("schedules")
    started = []
    for server_id, queue in (("firing", {}), ("admin_only", {"enable": False})):
        config = write_config(directory, api_db, queue=queue, log={"dir": str(directory / server_id)})
        started.append(ExecutorProcess(config, api_db, server_id).start())
    yield started
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def url(servers):
    return servers[0].admin_url


@pytest.fixture(scope="module")
def other_url(servers):
    return servers[1].admin_url


def call(base: str, method: str, path: str, body=None, **query):
    target = f"{base}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    return http(method, target, body=body)


def ok(response, status=200):
    code, body = response
    assert code == status, body
    assert body["code"] == 0, body
    return body["data"]


def error(response, status, start):
    code, body = response
    assert code == status, body
    assert body["data"] is None and body["code"] == status, body
    assert body["message"].startswith(start), body["message"]
    return body["message"]


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def test_create_answers_the_next_five_fires_and_list_and_get_agree(url, api_db):
    created = ok(
        call(
            url,
            "POST",
            "/admin/schedule/create",
            {
                "name": "berlin_two_am",
                "queue_name": "quiet",
                "task_type": "noop",
                "task_params": {"k": 1},
                "cron": "0 2 * * *",
                "timezone": "Europe/Berlin",
            },
        ),
        201,
    )
    assert created["task_params"] == {"k": 1} and created["status"] == 1
    assert created["misfire_policy"] == "once" and created["overlap"] == "allow"
    assert created["description"] == "At 02:00 every day (Europe/Berlin)" and created["error"] is None
    fires = created["next_fires"]
    assert len(fires) == 5 and all(UTC_TEXT.match(text) for text in fires)
    assert fires[0] == created["next_fire_at"]
    times = [utc(text) for text in fires]
    # 02:00 in Berlin is 00:00 or 01:00 UTC, one day apart (23 or 25 hours at a transition)
    assert all(t.hour in (0, 1) and t.minute == 0 for t in times)
    assert all(timedelta(hours=23) <= b - a <= timedelta(hours=25) for a, b in itertools.pairwise(times))
    listed = {row["name"]: row for row in ok(call(url, "GET", "/admin/schedule/list"))}
    assert listed["berlin_two_am"]["next_fires"] == fires
    assert listed["hourly_report"]["status"] == 0  # the sample from init.sql, paused
    assert ok(call(url, "GET", "/admin/schedule/get", id=created["id"]))["next_fires"] == fires


def test_run_now_pause_resume_fires_and_delete(url, api_db):
    schedule = ok(
        call(
            url,
            "POST",
            "/admin/schedule/create",
            {"name": "hourly_noop", "queue_name": "quiet", "task_type": "noop", "interval_seconds": 3600},
        ),
        201,
    )
    sid = schedule["id"]
    row_before = api_db.query("SELECT * FROM schedules WHERE id = %s", (sid,))
    # run: one task now, in the ledger, the schedule unchanged
    fired = ok(call(url, "POST", "/admin/schedule/run", id=sid), 201)
    assert fired["task_table"] == "quiet_tasks" and fired["outcome"] == "enqueued"
    assert not fired["fire_at"].endswith(".000")  # never a whole second: no scheduled fire's place
    task = api_db.task("quiet_tasks", fired["task_id"])
    assert task["status"] == 0
    assert '"_schedule":{"name":"hourly_noop","fire_at":"' + fired["fire_at"] + '"}' in task["task_params"]
    assert api_db.query("SELECT * FROM schedules WHERE id = %s", (sid,)) == row_before
    fires = ok(call(url, "GET", "/admin/schedule/fires", id=sid))
    assert [(f["fire_at"], f["task_id"], f["task_status"]) for f in fires] == [
        (fired["fire_at"], fired["task_id"], 0)
    ]
    # pause, resume: next_fire_at is the first fire after now each time
    paused = ok(call(url, "POST", "/admin/schedule/pause", id=sid))
    assert paused["status"] == 0 and len(paused["next_fires"]) == 5
    resumed = ok(call(url, "POST", "/admin/schedule/resume", id=sid))
    now = api_db.scalar("SELECT UTC_TIMESTAMP(3)")
    assert resumed["status"] == 1 and now < utc(resumed["next_fire_at"]) <= now + timedelta(hours=1)
    # delete: gone, and its history stays
    ok(call(url, "DELETE", "/admin/schedule/delete", id=sid))
    error(call(url, "GET", "/admin/schedule/get", id=sid), 404, "id: ")
    error(call(url, "POST", "/admin/schedule/run", id=sid), 404, "id: ")
    assert api_db.scalar("SELECT COUNT(*) FROM schedule_fires WHERE schedule_id = %s", (sid,)) == 1


def test_an_edit_on_another_server_applies_within_a_second_and_delete_stops_it(url, other_url, api_db):
    schedule = ok(
        call(
            other_url,
            "POST",
            "/admin/schedule/create",
            {"name": "speeds_up", "queue_name": "sq", "task_type": "scheduled", "interval_seconds": 3600},
        ),
        201,
    )
    sid = schedule["id"]
    # When it is made every-second through the server that does not fire
    edited_at = api_db.scalar("SELECT UTC_TIMESTAMP(3)")
    ok(call(other_url, "PUT", "/admin/schedule/update", {"interval_seconds": 1}, id=sid))
    first = wait_for(
        lambda: api_db.scalar("SELECT MIN(fire_at) FROM schedule_fires WHERE schedule_id = %s", (sid,)),
        10,
        message="a fire",
    )
    # Then the firing server fired the first second after the edit (it re-reads
    # every second; nothing told it); on a busy machine allow a few seconds
    assert edited_at < first <= edited_at + timedelta(seconds=3)
    # And after delete nothing more fires
    wait_for(lambda: api_db.scalar("SELECT COUNT(*) FROM sched_tasks") >= 2, 10)
    ok(call(other_url, "DELETE", "/admin/schedule/delete", id=sid))
    count = api_db.scalar("SELECT COUNT(*) FROM schedule_fires WHERE schedule_id = %s", (sid,))
    time.sleep(2.5)  # not an assertion on timing: room for fires that must not happen
    assert api_db.scalar("SELECT COUNT(*) FROM schedule_fires WHERE schedule_id = %s", (sid,)) == count
    assert api_db.scalar("SELECT COUNT(*) FROM sched_tasks") == count


def test_a_missing_queue_sends_tasks_to_the_table_of_the_last_fire(url, api_db):
    api_db.add_queue("doomed", "doomed_tasks", status=0)
    sid = ok(
        call(
            url,
            "POST",
            "/admin/schedule/create",
            {"name": "doomed", "queue_name": "doomed", "task_type": "noop", "cron": "@yearly"},
        ),
        201,
    )["id"]
    never = ok(
        call(
            url,
            "POST",
            "/admin/schedule/create",
            {"name": "doomed_never_fired", "queue_name": "doomed", "task_type": "noop", "cron": "@yearly"},
        ),
        201,
    )["id"]
    ok(call(url, "POST", "/admin/schedule/run", id=sid), 201)
    api_db.execute("DELETE FROM queue_configs WHERE queue_name = 'doomed'")
    again = ok(call(url, "POST", "/admin/schedule/run", id=sid), 201)
    assert again["task_table"] == "doomed_tasks"
    assert api_db.scalar("SELECT COUNT(*) FROM doomed_tasks") == 2
    error(call(url, "POST", "/admin/schedule/run", id=never), 409, "queue_name: ")


GOOD = {"name": "g", "queue_name": "quiet", "task_type": "noop", "cron": "* * * * *"}


@pytest.mark.parametrize(
    ("change", "start"),
    [
        ({"cron": "61 * * * *"}, "cron: Bad minute"),
        ({"cron": "* * * *"}, "cron: must have 5 fields"),
        ({"cron": "@reboot"}, "cron: unknown alias"),
        ({"cron": "0 0 31 4 *"}, "cron: "),
        ({"timezone": "Mars/Olympus"}, "timezone: unknown time zone"),
        ({"interval_seconds": 60}, "cron: give exactly one of cron and interval_seconds (both"),
        ({"cron": None}, "cron: give exactly one of cron and interval_seconds (neither"),
        ({"queue_name": "nope"}, "queue_name: no queue is named 'nope'"),
        ({"task_params": [1, 2]}, "task_params: must be an object"),
        ({"task_params": "[1]"}, "task_params: must be an object"),
        ({"task_params": 5}, "task_params: must be an object"),
        ({"task_params": {"_schedule": 1}}, "task_params: _schedule is reserved"),
        ({"misfire_policy": "sometimes"}, "misfire_policy: must be one of skip, once, all"),
        ({"overlap": "maybe"}, "overlap: must be one of allow, skip"),
        ({"max_catchup": 0}, "max_catchup: must be an integer from 1 to 1,000"),
        ({"interval_seconds": 0, "cron": None}, "interval_seconds: must be an integer from 1"),
        ({"colour": "red"}, "colour: unknown field"),
    ],
)
def test_bad_schedules_are_400_naming_the_field_and_write_nothing(url, api_db, change, start):
    before = api_db.scalar("SELECT COUNT(*) FROM schedules")
    error(call(url, "POST", "/admin/schedule/create", {**GOOD, **change}), 400, start)
    assert api_db.scalar("SELECT COUNT(*) FROM schedules") == before


def test_bad_updates_and_ids(url, api_db):
    sid = ok(call(url, "POST", "/admin/schedule/create", {**GOOD, "name": "target"}), 201)["id"]
    ok(call(url, "POST", "/admin/schedule/create", {**GOOD, "name": "taken"}), 201)
    row = api_db.query("SELECT * FROM schedules WHERE id = %s", (sid,))
    error(call(url, "PUT", "/admin/schedule/update", {"cron": "x"}, id=sid), 400, "cron: ")
    error(
        call(url, "PUT", "/admin/schedule/update", {"cron": "* * * * *", "interval_seconds": 5}, id=sid),
        400,
        "cron: ",
    )
    error(call(url, "PUT", "/admin/schedule/update", {"queue_name": "nope"}, id=sid), 400, "queue_name: ")
    error(call(url, "PUT", "/admin/schedule/update", {"name": "taken"}, id=sid), 409, "name: ")
    error(call(url, "PUT", "/admin/schedule/update", {}, id=sid), 400, "body: give at least one")
    error(call(url, "POST", "/admin/schedule/create", {**GOOD, "name": "taken"}), 409, "name: ")
    assert api_db.query("SELECT * FROM schedules WHERE id = %s", (sid,)) == row
    for path in ("/admin/schedule/get", "/admin/schedule/fires"):
        error(call(url, "GET", path, id=999_999), 404, "id: ")
        error(call(url, "GET", path, id="x"), 400, "id: ")
    for path in ("/admin/schedule/pause", "/admin/schedule/resume", "/admin/schedule/run"):
        error(call(url, "POST", path, id=999_999), 404, "id: ")
    # an interval given in an update switches a cron schedule to a fixed rate
    switched = ok(call(url, "PUT", "/admin/schedule/update", {"interval_seconds": 90}, id=sid))
    assert switched["cron"] is None and switched["description"] == "every 90 seconds"

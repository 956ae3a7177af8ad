"""`python -m geventq status` as a subprocess against a test database: no
executor runs, the command reads the database itself."""

from __future__ import annotations

import re
import subprocess
import sys

from geventq import Status, store
from tests.support import REPO, free_port, write_config


def status(config_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geventq", "status", "--config", str(config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows_of(output: str, section: str) -> dict[str, dict[str, str]]:
    """The table under `section`, as {first cell: {header: cell}}."""
    lines = output.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(section))
    header = lines[start + 1]
    # Column edges from the header: each title starts after two or more spaces.
    starts = [match.start() for match in re.finditer(r"(?<=  )\S+(?: \S+)*", header)]
    titles = [header[begin:end].strip() for begin, end in zip(starts, [*starts[1:], None], strict=True)]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("  ") or line.startswith("  !"):
            break
        cells = re.split(r" {2,}", line.strip())
        assert len(cells) == len(titles), f"misaligned row {line!r} under {header!r}"
        rows[cells[0]] = dict(zip(titles, cells, strict=True))
    return rows


def test_status_prints_queues_and_servers_from_the_database(db, tmp_path):
    # Given a queue pinned to a server, with tasks in every status, and two server rows
    db.add_queue("orders", "order_tasks", server_id="server-007", max_workers=12, scan_interval=3)
    db.add_queue("paused", "paused_tasks", status=0)
    for task_status, count in zip(Status, (4, 2, 5, 1, 3), strict=True):
        for _ in range(count):
            db.execute(
                "INSERT INTO order_tasks (task_type, status, schedule_time) "
                "VALUES ('x', %s, NOW(3) - INTERVAL 90 SECOND)",
                (int(task_status),),
            )
    db.insert_tasks("order_tasks", "x", 1, delay_seconds=3600)  # pending, not yet due
    # the finished ones counted as geventq counts the outcomes it writes
    with db.connect() as conn, conn.cursor() as cur:
        store.count_outcomes(
            cur, "order_tasks", "server-007", {Status.DONE: 5, Status.FAILED: 1, Status.CANCELLED: 3}
        )
    db.execute(
        "INSERT INTO servers (server_id, host, pid, state, queues, running, last_heartbeat) "
        "VALUES ('server-007', 'web-7', 4242, 'online', '[\"orders\"]', 2, NOW(3)), "
        "('server-old', 'web-1', 99, 'offline', '[]', 0, NOW(3) - INTERVAL 1 HOUR)"
    )
    # and two schedules: one that fired task 1 of order_tasks, one written by SQL with a bad zone
    db.execute(
        "INSERT INTO schedules (name, queue_name, task_type, cron, timezone, next_fire_at, last_fire_at, "
        "last_task_id) VALUES ('nightly', 'orders', 'x', '0 3 * * *', 'Europe/Berlin', "
        "'2030-01-01 02:00:00', '2029-12-31 02:00:00', 1)"
    )
    nightly = db.scalar("SELECT id FROM schedules WHERE name = 'nightly'")
    db.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, task_table, task_id, outcome) "
        "VALUES (%s, '2029-12-31 02:00:00', 'order_tasks', 1, 'enqueued')",
        (nightly,),
    )
    db.execute(
        "INSERT INTO schedules (name, queue_name, task_type, interval_seconds, timezone) "
        "VALUES ('odd', 'orders', 'x', 60, 'Mars/Base')"
    )
    config = write_config(tmp_path, db)

    # When the status command runs
    result = status(config)

    # Then it exits 0 and shows each queue with its counts and its oldest due age
    assert result.returncode == 0, result.stderr
    assert db.name in result.stdout.splitlines()[0]
    queues = rows_of(result.stdout, "Queues")
    assert queues["orders"] == {
        "QUEUE": "orders",
        "TABLE": "order_tasks",
        "SERVER": "server-007",
        "WORKERS": "12",
        "SCAN": "3s",
        "ENABLED": "yes",
        "PENDING": "5",
        "RUNNING": "2",
        "DONE": "5",
        "FAILED": "1",
        "CANCELLED": "3",
        "OLDEST DUE": queues["orders"]["OLDEST DUE"],
    }
    assert re.fullmatch(r"1m3\ds", queues["orders"]["OLDEST DUE"])
    assert queues["paused"]["SERVER"] == "any" and queues["paused"]["ENABLED"] == "no"
    assert queues["paused"]["PENDING"] == "0" and queues["paused"]["OLDEST DUE"] == "-"
    assert "email_queue" in queues  # init.sql's sample queues

    # and each schedule with its cadence, next and last fire and its last task's status
    schedules = rows_of(result.stdout, "Schedules")
    assert schedules["nightly"] == {
        "SCHEDULE": "nightly",
        "QUEUE": "orders",
        "TYPE": "x",
        "WHEN": "0 3 * * *",
        "ZONE": "Europe/Berlin",
        "ENABLED": "yes",
        "NEXT FIRE (UTC)": "2030-01-01 02:00:00",
        "LAST FIRE (UTC)": "2029-12-31 02:00:00",
        "LAST TASK": "#1 pending",
    }
    assert schedules["hourly_report"]["ENABLED"] == "paused"  # init.sql's sample
    assert schedules["odd"]["WHEN"] == "every 60s"
    assert "  ! odd: timezone: unknown time zone 'Mars/Base'" in result.stdout
    assert "Schedules (2 enabled of 3)" in result.stdout

    # and each server, alive or not, with its heartbeat age and queues
    servers = rows_of(result.stdout, "Servers")
    assert servers["server-007"]["HOST"] == "web-7" and servers["server-007"]["PID"] == "4242"
    assert servers["server-007"]["ALIVE"] == "yes" and servers["server-007"]["QUEUES"] == "orders"
    assert servers["server-007"]["RUNNING"] == "2" and servers["server-007"]["STATE"] == "online"
    assert servers["server-old"]["ALIVE"] == "no" and servers["server-old"]["HEARTBEAT"].startswith("1h")
    assert "Servers (1 alive of 2" in result.stdout


def test_status_names_the_database_it_cannot_reach(db, tmp_path):
    # Given a config pointing at a port nothing listens on
    port = free_port()
    config = write_config(tmp_path, db, database={"port": port, "connect_timeout": 2})

    # When the status command runs
    result = status(config)

    # Then it fails, naming host:port
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""


def test_status_says_how_to_create_a_missing_schema(mariadb, tmp_path):
    # Given a config naming a database that does not exist
    from tests.support import TestDatabase

    missing = TestDatabase()

    # When the status command runs
    result = status(write_config(tmp_path, missing))

    # Then it fails, naming the database and what creates it
    assert result.returncode != 0
    assert missing.name in result.stderr and "start an executor once" in result.stderr


def test_applying_init_sql_shows_a_step_per_statement_group():
    # Given init.sql, split as the executor applies it
    from geventq.schema import INIT_SQL, split_statements, statement_groups

    # When its statements are grouped into progress steps
    groups = statement_groups(split_statements(INIT_SQL.read_text(encoding="utf-8")))

    # Then every statement is in exactly one step, each step has a label, and
    # consecutive statements on one table share a step
    labels = [label for label, _ in groups]
    assert sum(len(statements) for _, statements in groups) == len(split_statements(INIT_SQL.read_text()))
    assert labels[:2] == ["create queue_configs", "create servers"]
    assert len(labels) == len(set(labels))

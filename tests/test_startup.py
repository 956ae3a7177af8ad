"""Start-up: bootstrap of a fresh database, and every way start-up refuses
with a non-zero exit and a message that names the problem."""

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.faultproxy import FaultProxy
from tests.support import REPO, ExecutorProcess, TestDatabase, free_port, http, wait_for, write_config


def run_executor(config_path, *args, timeout=30, env=None):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "geventq", "--config", str(config_path), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


def test_fresh_database_is_created_with_schema_and_samples(mariadb, tmp_path):
    # Given a database name that does not exist yet
    fresh = TestDatabase()
    process = ExecutorProcess(write_config(tmp_path, fresh), fresh)
    try:
        # When an executor starts on it
        process.start()
        # Then it created it, applied init.sql, and runs the sample queues
        queues = {row["queue_name"] for row in fresh.query("SELECT queue_name FROM queue_configs")}
        assert queues == {"email_queue", "data_sync_queue", "report_queue"}
        assert fresh.scalar("SELECT COUNT(*) FROM email_tasks") == 2
        assert process.process.poll() is None
    finally:
        process.stop()
        fresh.drop()


@pytest.mark.parametrize(
    ("section", "values", "named"),
    [
        ("executor", {"heartbeat_intervall": 5}, "executor.heartbeat_intervall"),
        ("executor", {"heartbeat_interval": "fast"}, "executor.heartbeat_interval"),
        ("admin", {"port": 70000}, "admin.port"),
        ("admin", {"host": "0.0.0.0", "token": ""}, "admin.token"),
        ("queue", {"config_sync_interval": -1}, "queue.config_sync_interval"),
    ],
)
def test_config_errors_exit_non_zero_naming_the_key(db, tmp_path, section, values, named):
    config_path = write_config(tmp_path, db, **{section: values})
    code, output, _ = run_executor(config_path)
    assert code != 0
    assert named in output


def test_unreadable_config_file_is_named(tmp_path):
    broken = tmp_path / "config.json"
    broken.write_text('{"database": {"host": "127.0.0.1",}}')
    code, output, _ = run_executor(broken)
    assert code != 0 and "config.json" in output and "line 1" in output


def test_unreachable_database_exits_within_15_seconds(db, tmp_path):
    port = free_port()  # nothing listens there
    config_path = write_config(tmp_path, db, database={"port": port})
    code, output, elapsed = run_executor(config_path)
    assert code != 0
    assert f"127.0.0.1:{port}" in output and "Can't connect" in output
    assert elapsed < 15


def test_black_holed_database_exits_within_15_seconds(db, tmp_path):
    with FaultProxy() as proxy:
        proxy.set_mode("blackhole")
        port = proxy.port
        config_path = write_config(tmp_path, db, database={"port": port, "connect_timeout": 3})
        code, output, elapsed = run_executor(config_path)
    assert code != 0
    assert f"127.0.0.1:{port}" in output
    assert elapsed < 15


def test_handler_module_with_a_syntax_error_stops_start_up(db, tmp_path):
    handlers = tmp_path / "bad_handlers"
    handlers.mkdir()
    (handlers / "broken.py").write_text("from geventq import task_handler\n\ndef oops(:\n    pass\n")
    code, output, _ = run_executor(write_config(tmp_path, db), "--handlers", str(handlers))
    assert code != 0
    assert "broken.py" in output and "SyntaxError" in output


def test_two_handlers_for_one_type_stop_start_up(db, tmp_path):
    handlers = tmp_path / "dup_handlers"
    handlers.mkdir()
    for name in ("one", "two"):
        (handlers / f"{name}.py").write_text(
            "from geventq import task_handler\n\n@task_handler('dup')\ndef run(ctx):\n    pass\n"
        )
    code, output, _ = run_executor(write_config(tmp_path, db), "--handlers", str(handlers))
    assert code != 0
    assert "'dup'" in output and "registered twice" in output


def test_server_id_alive_on_another_host_is_refused(db, tmp_path):
    db.execute(
        "INSERT INTO servers (server_id, host, pid, state, last_heartbeat) "
        "VALUES ('server-001', 'elsewhere', 4242, 'online', NOW(3))"
    )
    # The other host keeps heartbeating, however long this executor takes to start
    stop = threading.Event()

    def heartbeat_elsewhere() -> None:
        while not stop.wait(0.5):
            db.execute("UPDATE servers SET last_heartbeat = NOW(3) WHERE server_id = 'server-001'")

    beating = threading.Thread(target=heartbeat_elsewhere, daemon=True)
    beating.start()
    try:
        code, output, _ = run_executor(write_config(tmp_path, db))
    finally:
        stop.set()
        beating.join()
    assert code != 0
    assert "server-001" in output and "elsewhere" in output


def test_environment_overrides_the_file(db, tmp_path):
    env = {**os.environ, "GEVENTQ_SERVER_ID": "from-env"}
    config_path = write_config(tmp_path, db)
    process = subprocess.Popen(
        [sys.executable, "-m", "geventq", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: db.scalar("SELECT state FROM servers WHERE server_id = 'from-env'") == "online")
    finally:
        process.terminate()
        assert process.wait(20) == 0


def test_cli_overrides_admin_port(db, executors):
    port = free_port()
    process = executors.start(extra_args=["--admin-port", str(port)])
    assert process.admin_url.endswith(f":{port}")
    status, body = http("GET", f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and body["data"]["server_id"] == "server-001"

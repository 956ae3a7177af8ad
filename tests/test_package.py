"""The package as a user gets it: a wheel built from this checkout, installed
into a fresh virtual environment outside the repository, run from a folder
that holds only a config.json and a handlers/ file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import REPO, TestDatabase, free_port, http, wait_for


class Installed:
    """A virtual environment with the wheel (and only it, with its dependencies) installed."""

    def __init__(self, venv: Path, wheel: Path):
        self.venv = venv
        self.wheel = wheel
        self.bin = venv / "bin"

    def env(self) -> dict[str, str]:
        # Nothing of this checkout may leak in: no PYTHONPATH, the venv's bin first.
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "GEVENTQ"))}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "geventq"), *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, code: str, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "python"), "-c", code],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """Build the wheel once per test session and install it into a new venv
    (not --system-site-packages: the venv sees only what pip put there)."""
    root = tmp_path_factory.mktemp("package")
    dist = root / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("geventq-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(venv, wheel)


def test_wheel_carries_the_sql_and_the_dashboard_from_one_source(installed):
    # Given the built wheel
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        packaged_sql = wheel.read("geventq/init.sql")
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    # Then init.sql is the repository's (copied at build time: the checkout holds one)
    assert packaged_sql == (REPO / "init.sql").read_bytes()
    assert not (REPO / "geventq" / "init.sql").exists()
    # and the dashboard files and the command are in it
    assert {
        "geventq/static/dashboard.html",
        "geventq/static/dashboard.js",
        "geventq/static/dashboard.css",
    } <= names
    assert "geventq = geventq.__main__:main" in scripts


def test_installed_command_runs_a_user_project(installed, mariadb, tmp_path):
    # Given an empty folder with only a config.json (a database that does not
    # exist yet) and one handler file
    project = tmp_path / "project"
    (project / "handlers").mkdir(parents=True)
    (project / "handlers" / "x.py").write_text(
        "from geventq import task_handler\n\n"
        "@task_handler('x')\n"
        "def x(ctx):\n"
        "    ctx.log.info('x ran with {}', ctx.params)\n"
    )
    database = TestDatabase()
    port = free_port()
    config = {
        "database": {"database": database.name, "pool_size": 4},
        "executor": {"server_id": "pkg-1", "heartbeat_interval": 0.5, "heartbeat_timeout": 3},
        "queue": {"config_sync_interval": 0.5},
        "admin": {"port": port},
    }
    (project / "config.json").write_text(json.dumps(config))

    # The installed package is the one that runs, not this checkout
    where = installed.python("import geventq; print(geventq.__file__)", cwd=project)
    assert str(installed.venv) in where.stdout, where.stdout + where.stderr

    executor = subprocess.Popen(
        [str(installed.bin / "geventq"), "run"],
        cwd=project,
        env=installed.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # When it starts: the schema is created from the packaged init.sql
        def online() -> bool:
            if executor.poll() is not None:
                raise AssertionError(f"geventq run exited {executor.returncode}: {executor.stdout.read()}")
            try:
                return database.scalar("SELECT state FROM servers WHERE server_id = 'pkg-1'") == "online"
            except Exception:  # noqa: BLE001 - the database does not exist yet
                return False

        wait_for(online, timeout=30, message="the installed executor online")
        assert database.scalar("SELECT COUNT(*) FROM queue_configs") == 3

        # Then a task of the project's handler, enqueued with the installed
        # command, runs; and one enqueued with geventq.Client in a plain script
        enqueued = installed.run("tasks", "enqueue", "email_queue", "x", '{"n": 1}', "--json", cwd=project)
        assert enqueued.returncode == 0, enqueued.stderr
        task_id = json.loads(enqueued.stdout)["id"]
        script = installed.python(
            "import geventq\n"
            "with geventq.Client('config.json') as client:\n"
            "    print(client.enqueue('email_queue', 'x', {'n': 2}))\n",
            cwd=project,
        )
        assert script.returncode == 0, script.stderr
        ids = (task_id, int(script.stdout))
        wait_for(
            lambda: all(database.task("email_tasks", i)["status"] == 2 for i in ids), message="tasks x done"
        )
        assert (project / "logs").is_dir()

        # and the dashboard is served
        status, page = http("GET", f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in page.lower()

        # and `geventq status` lists the server
        listed = installed.run("status", cwd=project)
        assert listed.returncode == 0, listed.stderr
        assert "pkg-1" in listed.stdout and "online" in listed.stdout
    finally:
        # SIGTERM drains and exits 0
        executor.send_signal(signal.SIGTERM)
        try:
            code = executor.wait(30)
        finally:
            if executor.poll() is None:
                executor.kill()
            database.drop()
    assert code == 0

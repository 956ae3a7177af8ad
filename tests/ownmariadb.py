"""A private MariaDB server for tests that crash the database: its own
datadir (from mariadb-install-db), port and socket, started, killed with
SIGKILL, restarted on the same datadir, and removed by the test.

    with OwnMariaDB() as server:      # installed and started
        server.kill()                 # kill -9: no shutdown, InnoDB recovers on start
        server.start()

Root has an empty password over TCP, like the machine's own MariaDB, so
TestDatabase and the executors connect to it the usual way, on its port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import pymysql

from tests.support import free_port

START_DEADLINE = 60.0


class OwnMariaDB:
    def __init__(self, root: Path | None = None, port: int | None = None, user: str | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="geventq-mariadb-"))
        self.datadir = self.root / "data"
        self.port = port or free_port()
        self.user = user or _user()
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def __enter__(self) -> Self:
        return self.install().start()

    def __exit__(self, *_) -> None:
        self.remove()

    def install(self) -> Self:
        self._give_root_to_user()
        result = subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--user={self.user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")
        return self

    def start(self) -> Self:
        """Start on the datadir (after a kill, InnoDB's crash recovery runs first)."""
        self.starts += 1
        log = open(self.root / "mariadbd.out", "ab")  # noqa: SIM115 - the server outlives this call
        self.process = subprocess.Popen(
            ["mariadbd", "--no-defaults", *self.server_args()],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready()
        return self

    def server_args(self) -> list[str]:
        """mariadbd's options after --no-defaults (a Galera node adds its own)."""
        return [
            f"--datadir={self.datadir}",
            f"--user={self.user}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--log-error={self.root / 'error.log'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=128M",
            "--max-connections=500",
            # Durable commits, as a production server has them: a crash loses
            # no committed claim or outcome, which is what the tests rely on.
            "--innodb-flush-log-at-trx-commit=1",
        ]

    def _give_root_to_user(self) -> None:
        """A server running as another user (mysql) must reach its folder and
        write its logs, socket and pid file there."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and self.user != "root":
            shutil.chown(self.root, self.user, self.user)
            self.root.chmod(0o755)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}:\n{self.error_log()}")
            try:
                pymysql.connect(
                    host="127.0.0.1", port=self.port, user="root", password="", connect_timeout=1
                ).close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mariadbd not ready after {START_DEADLINE:g}s:\n{self.error_log()}"
                    ) from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: nothing is flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def error_log(self, lines: int = 30) -> str:
        path = self.root / "error.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _user() -> str:
    # mariadbd refuses to run as root unless told to; any other user runs as itself.
    return "root" if os.geteuid() == 0 else os.environ.get("USER", "mysql")

"""Real `python -m geventq` processes for the benchmark: a config per
workload (defaults, except what the workload needs), start, wait until
online, memory, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.bench import profile
from tests.bench.benchdb import BenchDB

REPO = Path(__file__).resolve().parent.parent.parent
BENCH_HANDLERS = Path(__file__).resolve().parent / "handlers"


class Unavailable(Exception):
    """A workload cannot run here; the report says n/a and why."""


def write_config(workdir: Path, db: BenchDB, port: int | None = None) -> Path:
    """Default configuration, except: the bench database, any free admin port,
    the bench's handlers, and logs under the workload's folder. `port` points
    the executor at the statement-counting proxy instead of the server."""
    host = "127.0.0.1" if port else db.server.host
    config = {
        "database": {
            "host": host,
            "port": port or db.server.port,
            "username": db.server.user,
            "password": db.server.password,
            "database": db.database,
        },
        "admin": {"port": 0},
        "handlers": {"paths": [str(BENCH_HANDLERS)]},
        # Absolute: a relative log.dir is read against the config file's own
        # folder (this workdir), which would nest a second copy of the path.
        "log": {"dir": str((workdir / "logs").resolve())},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class Executor:
    def __init__(
        self,
        config: Path,
        server_id: str,
        db: BenchDB,
        profile_to: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ):
        self.config = config
        self.extra_args = extra_args  # W12: --processes N
        self.server_id = server_id
        self.db = db
        self.output_path = config.parent / f"executor-{server_id}.out"
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.profile_to = profile_to
        self.profile: dict | None = None
        self._profiler: profile.Profiler | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, profile_now: bool = True) -> Executor:
        """Start the process; with profiling on, attach py-spy at once unless
        `profile_now` is False (then `attach_profiler` later)."""
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "geventq",
                    "--config",
                    str(self.config),
                    "--server-id",
                    self.server_id,
                    *self.extra_args,
                ],
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        if profile_now:
            self.attach_profiler()
        return self

    def attach_profiler(self) -> None:
        if self.profile_to is not None and self._profiler is None:
            self._profiler = profile.Profiler(self.process.pid, self.profile_to)

    def wait_online(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            rows = self.db.query(
                "SELECT state, pid, admin_address FROM servers WHERE server_id = %s", (self.server_id,)
            )
            if rows and rows[0]["state"] == "online" and rows[0]["pid"] == self.pid:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.server_id} not online after {timeout:g}s:\n{self.output_tail()}")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"executor {self.server_id} exited with {self.process.returncode}:\n{self.output_tail()}"
            )

    @property
    def admin_url(self) -> str:
        address = self.db.scalar("SELECT admin_address FROM servers WHERE server_id = %s", (self.server_id,))
        return f"http://{address}"

    def cpu_s(self) -> float | None:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """Resident set size from /proc/PID/status (VmRSS), in MiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM, then wait; SIGKILL only past the timeout."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.exit_code = self.process.returncode
        if self._profiler is not None:
            self.profile = self._profiler.finish()
            self._profiler = None
        return self.exit_code

    def output_tail(self, lines: int = 30) -> str:
        try:
            text = self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def warnings(self) -> list[str]:
        """WARNING/ERROR lines of the executor's output (at most ten)."""
        try:
            text = self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = [line for line in text.splitlines() if "| WARNING" in line or "| ERROR" in line]
        return found[:10]


@contextmanager
def executors(
    db: BenchDB,
    workdir: Path,
    server_ids: list[str],
    profile_dir: Path | None = None,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
):
    """The executors of one workload (started by the caller); always stopped.
    With `profile_dir`, py-spy samples each into profile-{server_id}.txt."""
    config = write_config(workdir, db, port)
    started = [
        Executor(
            config,
            server_id,
            db,
            profile_dir / f"profile-{server_id}.txt" if profile_dir else None,
            extra_args,
        )
        for server_id in server_ids
    ]
    try:
        yield started
    finally:
        for executor in started:
            executor.stop()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def database_server_pid() -> int | None:
    """The local mariadbd/mysqld, whose CPU time the bench reports beside ours."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/comm") as comm:
                    if comm.read().strip() in ("mariadbd", "mysqld"):
                        return int(entry.name)
            except OSError:
                continue
    return None


def count_job_logs(workdir: Path) -> int:
    """Job log files the workload's executors wrote."""
    directory = workdir / "logs"
    if not directory.is_dir():
        return 0
    with os.scandir(directory) as entries:
        return sum(1 for entry in entries if entry.name.startswith("job-"))


def remove_job_logs(workdir: Path) -> int:
    """Delete the job logs of every workload (about 130,000 files in a full
    run). Done once, after the last workload: deleting files while another
    workload creates its own would slow that workload's file creation."""
    removed = 0
    for directory in workdir.rglob("logs"):
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("job-"):
                    os.unlink(entry.path)
                    removed += 1
    return removed

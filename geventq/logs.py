"""Logging with loguru, configured once, here.

Two kinds of file:
- `executor-YYYY-MM-DD.log`, rotated at midnight, kept `log.retention_days`;
- `job-{logID}-YYYY-MM-DD.log`, one per task and day, holding the start and
  outcome lines and whatever the handler logged through `ctx.log`.

Job logs cost the hub one formatted line per event: a single loguru sink
routes records bound with `log_id` to the run they belong to (no sink is
added or removed per task), and a native thread does the file system calls.
loguru's `enqueue=True` is never used: its multiprocessing queue hangs once
threads are monkey-patched (loguru#284).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
from gevent import monkey
from loguru import logger

from geventq.config import LogConfig

native_sleep = monkey.get_original("time", "sleep")
start_native_thread = monkey.get_original("_thread", "start_new_thread")

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}"
EXECUTOR_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}"


def _not_job_record(record: Any) -> bool:
    return "log_id" not in record["extra"]


class JobLogs:
    """Job log files, written by a native thread.

    Creating a file costs tens of microseconds of system calls, more than a
    no-op task itself, so the hub only formats a line and appends it to a
    deque; a native thread (which releases the GIL in those system calls)
    drains the deque, grouping lines by file: one open, write and close per
    file per pass. Lines of one run stay in order: one producer, one consumer.
    """

    def __init__(self, directory: Path):
        self.directory = str(directory)
        self._paths: dict[str, str] = {}  # log_id -> file, for runs in progress
        self._pending: deque[tuple[str, str]] = deque()
        self._in_flight = 0  # lines the writer has taken but not yet written
        self._stopping = False
        self._writer_done = True
        self.last_error: str | None = None

    def start(self) -> None:
        self._writer_done = False
        start_native_thread(self._write_loop, ())

    def path_for(self, log_id: str, day: str | None = None) -> str:
        return f"{self.directory}/job-{log_id}-{day or _today()}.log"

    def begin(self, log_id: str, text: str) -> None:
        if len(self._pending) > MAX_BACKLOG and not self._writer_done:
            self._wait_for_writer()
        path = self._paths[log_id] = self.path_for(log_id)
        self._pending.append((path, _line("INFO", text)))

    def _wait_for_writer(self) -> None:
        """Backpressure: when the disk falls behind, new runs wait (yielding)
        instead of the backlog, and the process's memory, growing without end."""
        while len(self._pending) > MAX_BACKLOG // 2 and not self._writer_done:
            gevent.sleep(0.001)

    def line(self, log_id: str, level: str, text: str) -> None:
        """A line of our own (start, outcome), without a loguru round trip."""
        path = self._paths.get(log_id)
        if path is not None:
            self._pending.append((path, _line(level, text)))

    def end(self, log_id: str) -> None:
        self._paths.pop(log_id, None)

    def sink(self, message: Any) -> None:
        path = self._paths.get(message.record["extra"].get("log_id"))
        if path is not None:
            self._pending.append((path, str(message)))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (cooperatively) until every line so far is on disk."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            if self._writer_done:
                self._write_batch()
            else:
                gevent.sleep(0.002)
        return not (self._pending or self._in_flight)

    def stop(self, timeout: float = 5.0) -> None:
        """Write everything, then let the writer thread end (before exit, or
        its last files would be cut short)."""
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stopping = True
        while not self._writer_done and time.monotonic() < deadline:
            gevent.sleep(0.002)

    def _write_loop(self) -> None:
        try:
            while not (self._stopping and not self._pending):
                if not self._write_batch():
                    native_sleep(0.005)
        finally:
            self._writer_done = True

    def _write_batch(self) -> int:
        """Write what is pending, one open/write/close per file; how many lines."""
        by_file: dict[str, list[str]] = {}
        count = 0
        while self._pending and count < 10_000:
            # Counted before the deque can look empty, so flush() keeps waiting.
            self._in_flight += 1
            path, text = self._pending.popleft()
            by_file.setdefault(path, []).append(text)
            count += 1
        try:
            self._write_files(by_file)
        finally:
            self._in_flight -= count
        return count

    def _write_files(self, by_file: dict[str, list[str]]) -> None:
        for path, texts in by_file.items():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                try:
                    os.write(fd, "".join(texts).encode("utf-8", "replace"))
                finally:
                    os.close(fd)
            except OSError as error:
                # Logged by the executor's maintenance loop: loguru's lock is a
                # greenlet lock once patched, not for this thread.
                self.last_error = f"{path}: {error}"

    def read(self, log_id: str) -> str:
        """Every day's job log of one task, oldest first."""
        self.flush(1.0)
        files = sorted(Path(self.directory).glob(f"job-{log_id}-????-??-??.log"))
        return "".join(file.read_text(encoding="utf-8", errors="replace") for file in files)

    def prune(self, retention_days: int) -> int:
        """Delete job logs older than the retention period; returns how many."""
        cutoff = time.time() - retention_days * 86400
        removed = 0
        for file in Path(self.directory).glob("job-*.log"):
            try:
                if file.stat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class Throttle:
    """ready() is true at most once per `every` seconds: a loop that keeps
    failing (an outage) logs a line per interval, not one per attempt."""

    def __init__(self, every: float):
        self.every = every
        self._last: float | None = None

    def ready(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last <= self.every:
            return False
        self._last = now
        return True


# Lines waiting for the writer thread before new runs wait for it (a few MB).
MAX_BACKLOG = 50_000

_second: tuple[int, str] = (-1, "")  # the formatted current second, reused for every line in it


def _formatted_second(whole: int) -> str:
    global _second
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(whole)))
    return _second[1]


def _today() -> str:
    return _formatted_second(int(time.time()))[:10]


def _line(level: str, text: str) -> str:
    now = time.time()
    whole = int(now)
    return f"{_formatted_second(whole)}.{int((now - whole) * 1000):03d} | {level: <7} | {text}\n"


def configure(config: LogConfig, *, to_stderr: bool = True) -> JobLogs:
    """Install the sinks; returns the job log router."""
    directory = Path(config.dir)
    directory.mkdir(parents=True, exist_ok=True)
    logger.remove()
    if to_stderr:
        logger.add(
            sys.stderr, level=config.level, format=EXECUTOR_FORMAT, filter=_not_job_record, diagnose=False
        )
    # diagnose=False everywhere: tracebacks must not print variable values
    # (request headers, passwords) into the logs.
    logger.add(
        str(directory / "executor-{time:YYYY-MM-DD}.log"),
        level=config.level,
        diagnose=False,
        format=EXECUTOR_FORMAT,
        filter=_not_job_record,
        rotation="00:00",
        retention=f"{config.retention_days} days",
        encoding="utf-8",
    )
    job_logs = JobLogs(directory)
    job_logs.start()
    logger.add(
        job_logs.sink,
        level=config.level,
        format=FORMAT,
        diagnose=False,
        filter=lambda record: "log_id" in record["extra"],
    )
    return job_logs

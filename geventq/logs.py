"""Logging with loguru, configured once, here.

Two kinds of file:
- `executor-YYYY-MM-DD.log`, rotated at midnight, kept `log.retention_days`;
- `job-{logID}-YYYY-MM-DD.log`, one per task and day, holding the start and
  outcome lines and whatever the handler logged through `ctx.log`.

Job logs cost one file open and close per run, nothing more: a single loguru
sink routes records bound with `log_id` to the file open for that run, so no
sink is added or removed per task. loguru's `enqueue=True` is never used: its
multiprocessing queue hangs once threads are monkey-patched (loguru#284).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from loguru import logger

from geventq.config import LogConfig

FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}"
EXECUTOR_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}"


def _not_job_record(record: dict) -> bool:
    return "log_id" not in record["extra"]


class JobLogs:
    """The open job log files, keyed by log_id."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: dict[str, IO[str]] = {}

    def path_for(self, log_id: str, day: str | None = None) -> Path:
        return self.directory / f"job-{log_id}-{day or time.strftime('%Y-%m-%d')}.log"

    def open(self, log_id: str) -> None:
        # Closed in close(), at the end of the run: the file outlives this call.
        self._files[log_id] = open(self.path_for(log_id), "a", encoding="utf-8")  # noqa: SIM115

    def line(self, log_id: str, level: str, text: str) -> None:
        """Write a line of our own (start, outcome) without a loguru round trip."""
        handle = self._files.get(log_id)
        if handle is not None:
            stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            handle.write(f"{stamp} | {level: <7} | {text}\n")

    def close(self, log_id: str) -> None:
        handle = self._files.pop(log_id, None)
        if handle is not None:
            handle.close()

    def sink(self, message: Any) -> None:
        handle = self._files.get(message.record["extra"].get("log_id"))
        if handle is not None:
            handle.write(message)

    def read(self, log_id: str) -> str:
        """Every day's job log of one task, oldest first."""
        files = sorted(self.directory.glob(f"job-{log_id}-????-??-??.log"))
        return "".join(file.read_text(encoding="utf-8", errors="replace") for file in files)

    def prune(self, retention_days: int) -> int:
        """Delete job logs older than the retention period; returns how many."""
        cutoff = time.time() - retention_days * 86400
        removed = 0
        for file in self.directory.glob("job-*.log"):
            try:
                if file.stat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def configure(config: LogConfig, *, to_stderr: bool = True) -> JobLogs:
    """Install the sinks; returns the job log router."""
    directory = Path(config.dir)
    directory.mkdir(parents=True, exist_ok=True)
    logger.remove()
    if to_stderr:
        logger.add(sys.stderr, level=config.level, format=EXECUTOR_FORMAT, filter=_not_job_record)
    logger.add(str(directory / "executor-{time:YYYY-MM-DD}.log"), level=config.level,
               format=EXECUTOR_FORMAT, filter=_not_job_record, rotation="00:00",
               retention=f"{config.retention_days} days", encoding="utf-8")
    job_logs = JobLogs(directory)
    logger.add(job_logs.sink, level=config.level, format=FORMAT,
               filter=lambda record: "log_id" in record["extra"])
    return job_logs

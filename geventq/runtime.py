"""The state one executor process shares between its parts: what is
configured, what is registered, what is running. Built once by executor.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geventq.attempts import ClaimedAttempts, Listeners
from geventq.config import Config
from geventq.db import Database, QuotedTable
from geventq.lease import Lease
from geventq.logs import JobLogs

if TYPE_CHECKING:
    from geventq.queues import QueueRunner




@dataclass
class Runtime:
    config: Config
    server_id: str
    db: Database
    claim_db: Database
    handler_db: Database
    handlers: dict[str, Callable]
    job_logs: JobLogs
    lease: Lease
    skip_locked: bool = True
    admin_address: str = ""
    # table_name -> quoted identifier, for every queue in queue_configs
    registered_tables: dict[str, QuotedTable] = field(default_factory=dict)
    # table_name -> queue_configs.retention_days, for every queue
    retention_days: dict[str, int] = field(default_factory=dict)
    runners: dict[str, QueueRunner] = field(default_factory=dict)
    draining: set = field(default_factory=set)
    claimed: ClaimedAttempts = field(default_factory=ClaimedAttempts)
    listeners: Listeners = field(default_factory=Listeners)
    state: str = "starting"
    recorder: Any = None
    sync: Any = None
    metrics: Any = None

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self.handlers)

    def all_runners(self) -> list[QueueRunner]:
        return [*self.runners.values(), *self.draining]

    def stop_all_handlers(self, exception: type[BaseException]) -> int:
        """Kill every running handler with `exception`; how many there were."""
        return sum(runner.stop_handlers(exception) for runner in self.all_runners())

    def running_count(self) -> int:
        return sum(len(runner.pool) for runner in self.all_runners())

    def runner_for_table(self, table_name: str) -> QueueRunner | None:
        """The queue this server runs on that table, if it runs one."""
        return next((runner for runner in self.runners.values() if runner.table_name == table_name), None)

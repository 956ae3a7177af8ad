"""The state one executor process shares between its parts: what is
configured, what is registered, what is running. Built once by executor.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geventq.attempts import ClaimedAttempts, Listeners
from geventq.config import Config
from geventq.db import Database, QuotedTable
from geventq.logs import JobLogs

if TYPE_CHECKING:
    from geventq.queues import QueueRunner


class Lease:
    """This server's right to run tasks, renewed by every heartbeat that
    reaches the database. Measured on our own monotonic clock: once it has not
    been renewed for half of heartbeat_timeout we stop our handlers, so they
    are gone before any other server may rescue their tasks.

    A renewal that comes after the lease ran out starts a new *epoch*, and the
    lease stays invalid until the hub has stopped every handler of the old one
    (`end_lapse`): the hub may have been blocked through the whole lapse, and
    meanwhile other servers may have rescued, and even reclaimed, our tasks.
    A claim sent in one epoch never starts its tasks in another."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self.renewed_at: float | None = None
        self.epoch = 0
        self._settled_epoch = 0

    def renew(self, sent_at: float) -> None:
        # The time the heartbeat was *sent*: the database may have seen it at
        # any moment after that, so counting from then is the safe side.
        if self.renewed_at is not None and time.monotonic() - self.renewed_at >= self.ttl:
            self.epoch += 1
        self.renewed_at = sent_at

    def expired(self) -> bool:
        return self.renewed_at is None or time.monotonic() - self.renewed_at >= self.ttl

    def lapse_unsettled(self) -> bool:
        """A lapse ended (renewed since) but the hub has not stopped its handlers yet."""
        return self.epoch != self._settled_epoch

    def end_lapse(self) -> None:
        """Called by the hub once the handlers of every earlier epoch are stopped."""
        self._settled_epoch = self.epoch

    def valid(self) -> bool:
        return not self.expired() and not self.lapse_unsettled()

    def valid_in(self, epoch: int) -> bool:
        """Still valid, and never lapsed since `epoch` was read."""
        return self.valid() and self.epoch == epoch


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

    def running_count(self) -> int:
        return sum(len(runner.pool) for runner in self.all_runners())

    def runner_for_table(self, table_name: str) -> QueueRunner | None:
        """The queue this server runs on that table, if it runs one."""
        return next((runner for runner in self.runners.values() if runner.table_name == table_name), None)

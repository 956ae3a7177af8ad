"""Reconciles the queue_configs table with the queues this server runs, every
`queue.config_sync_interval` seconds (or at once when woken by the admin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from loguru import logger

from geventq import store
from geventq.db import QuotedTable, quote_table
from geventq.errors import DatabaseError, InvalidIdentifier
from geventq.logs import Throttle
from geventq.queues import QueueRunner
from geventq.runtime import Runtime

OUTAGE_LOG_EVERY = 10.0


def wanted_here(row: dict[str, Any], server_id: str) -> bool:
    return int(row["status"]) == 1 and row["server_id"] in ("", server_id)


class QueueSync:
    def __init__(self, runtime: Runtime, claim: Callable[..., list[dict]]):
        self.runtime = runtime
        self.claim = claim
        self.interval = runtime.config.queue.config_sync_interval
        self.run_queues = runtime.config.queue.enable
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._bad_tables: set[str] = set()
        self._errors = Throttle(OUTAGE_LOG_EVERY)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.sync_once()
            except DatabaseError as error:
                self._log_error(error)
            except Exception:  # noqa: BLE001 - log and carry on with the next sync
                logger.exception("config sync failed")
            self._wake.wait(self.interval)

    def _log_error(self, error: DatabaseError) -> None:
        if self._errors.ready():
            logger.warning("config sync: database {}: {}", self.runtime.db.address, error)

    def sync_once(self) -> None:
        rows = self.runtime.db.call(store.list_queue_configs)
        self.runtime.registered_tables = self._registered_tables(rows)
        self.runtime.retention_days = {row["table_name"]: int(row.get("retention_days") or 0)
                                       for row in rows}
        if not self.run_queues:
            return
        wanted = {row["queue_name"]: row for row in rows
                  if wanted_here(row, self.runtime.server_id)
                  and row["table_name"] in self.runtime.registered_tables}
        for name in list(self.runtime.runners):
            row = wanted.get(name)
            if row is None or row["table_name"] != self.runtime.runners[name].table_name:
                self._retire(name)
        for name, row in wanted.items():
            runner = self.runtime.runners.get(name)
            if runner is None:
                self._start(row)
            else:
                runner.apply(row)

    def _registered_tables(self, rows: list[dict[str, Any]]) -> dict[str, QuotedTable]:
        tables = {}
        for row in rows:
            name = row["table_name"]
            try:
                tables[name] = quote_table(name, None)
            except InvalidIdentifier as error:
                if name not in self._bad_tables:
                    logger.error("queue {} is skipped: {}", row["queue_name"], error)
                self._bad_tables.add(name)
        return tables

    def _start(self, row: dict[str, Any]) -> None:
        runner = QueueRunner(self.runtime, row, self.claim)
        self.runtime.runners[runner.queue_name] = runner
        runner.start()

    def _retire(self, name: str) -> None:
        """Stop claiming for a queue that was disabled, deleted or moved away,
        and let its running tasks finish in the background."""
        runner = self.runtime.runners.pop(name)
        self.runtime.draining.add(runner)
        logger.info("queue {} no longer runs here: draining {} running tasks", name, runner.running)
        gevent.spawn(self._drain, runner)

    def _drain(self, runner: QueueRunner) -> None:
        runner.drain(timeout=None)
        self.runtime.draining.discard(runner)
        logger.info("queue {} drained", runner.queue_name)

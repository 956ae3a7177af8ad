"""Reconciles the queue_configs table with the queues this server runs, every
`queue.config_sync_interval` seconds (or at once when woken by the admin)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from loguru import logger

from geventq import store
from geventq.catalog import QueueCatalog
from geventq.db import Database
from geventq.errors import DatabaseError
from geventq.logs import Throttle
from geventq.queues import QueueRunner, RunningQueues

OUTAGE_LOG_EVERY = 10.0


def wanted_here(row: dict[str, Any], server_id: str) -> bool:
    return int(row["status"]) == 1 and row["server_id"] in ("", server_id)


class QueueSync:
    """Reads queue_configs into the catalog, and (with `queue.enable`) starts,
    retires and re-sizes this server's queues to match it."""

    def __init__(
        self,
        db: Database,
        catalog: QueueCatalog,
        queues: RunningQueues,
        *,
        server_id: str,
        interval: float,
        run_queues: bool,
        make_runner: Callable[[dict[str, Any]], QueueRunner],
        running_changed: Callable[[], None] = lambda: None,
    ):
        self.db = db
        self.catalog = catalog
        self.queues = queues
        self.server_id = server_id
        self.interval = interval
        self.run_queues = run_queues
        self.make_runner = make_runner
        # Told when the set of queues run here changed: our servers row must
        # list them before other servers' wakes can reach them.
        self.running_changed = running_changed
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
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
            logger.warning("config sync: database {}: {}", self.db.address, error)

    def read_catalog(self) -> list[dict[str, Any]]:
        """Only learn what is registered (start-up does this before anything may claim)."""
        rows = self.db.call(store.list_queue_configs)
        self.catalog.update(rows)
        return rows

    def sync_once(self) -> None:
        rows = self.read_catalog()
        if not self.run_queues:
            return
        wanted = {
            row["queue_name"]: row
            for row in rows
            if wanted_here(row, self.server_id) and row["table_name"] in self.catalog.tables
        }
        before = set(self.queues.active)
        for name, runner in list(self.queues.active.items()):
            row = wanted.get(name)
            if row is None or row["table_name"] != runner.table_name:
                self.queues.retire(name)
        for name, row in wanted.items():
            running = self.queues.active.get(name)
            if running is None:
                self.queues.add(self.make_runner(row))
            else:
                running.apply(row)
        if set(self.queues.active) != before:
            self.running_changed()

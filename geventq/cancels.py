"""Cancelling running tasks: this server's side.

The admin (or the Client) stores a request in `task_cancels` for the
running attempt, naming its owner. The owner's `CancelWatch` reads the
requests addressed to it twice a second, and at once when another server's
admin pokes it (POST /admin/cancels/check), and throws `TaskCancelled` into
the handler at its next cooperative switch. The attempt then ends cancelled
(status 4), and the outcome's write removes the request. A handler that
already returned keeps its outcome. When the owner dies first, the rescue
sees the request and cancels the task instead of requeueing it (store.py).
Requests whose attempt ended another way are removed by the maintenance pass.
"""

from __future__ import annotations

import gevent
from gevent.event import Event
from loguru import logger

from geventq import store
from geventq.attempts import ClaimedAttempts
from geventq.db import Database
from geventq.errors import DatabaseError, TaskCancelled
from geventq.logs import Throttle

POLL_EVERY = 0.5


class CancelWatch:
    def __init__(self, db: Database, server_id: str, claimed: ClaimedAttempts, interval: float = POLL_EVERY):
        self.db = db
        self.server_id = server_id
        self.claimed = claimed
        self.interval = interval
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._errors = Throttle(10)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.check_once()
            except DatabaseError as error:
                if self._errors.ready():
                    logger.warning("cancel requests: database {}: {}", self.db.address, error)
            except Exception:  # noqa: BLE001 - log and carry on: the next poll may do better
                logger.exception("checking cancel requests failed")
            self._wake.wait(self.interval)

    def check_once(self) -> int:
        """Stop the handlers of attempts with a cancel request; how many were stopped now.
        Nothing runs here: nothing to ask the database."""
        if not len(self.claimed):
            return 0
        stopped = 0
        for request in self.db.call(store.cancel_requests_for, self.server_id):
            what = self.claimed.cancel(
                request["table_name"], request["task_id"], request["retry_count"], TaskCancelled
            )
            if what == "stopping":
                stopped += 1
                logger.info(
                    "cancel requested: stopping task {}-{} (attempt {})",
                    request["table_name"],
                    request["task_id"],
                    request["retry_count"] + 1,
                )
        return stopped

"""This server's lease: its right to run tasks. The lease itself, the
heartbeat thread that renews it, and the watch that stops every handler when
it lapses.

The heartbeat runs in a native thread with its own connection, not in a
greenlet: a handler that blocks the hub (a CPU loop that never yields) must
not make a busy server look dead. The thread touches no gevent primitive and
logs nothing itself (loguru's lock is a greenlet lock once patched); it leaves
its last error for the hub to report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from loguru import logger

from geventq import store
from geventq.db import Connection, Database, translate
from geventq.errors import DatabaseUnavailable, LeaseLost

native_sleep = monkey.get_original("time", "sleep")
start_native_thread = monkey.get_original("_thread", "start_new_thread")

WATCH_EVERY = 0.25


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


class Heartbeat:
    """Renews `servers.last_heartbeat` every heartbeat_interval from a native
    thread, and with it the lease. `register(cur)` writes our row again when
    it was deleted under us; `snapshot()` (called on the hub) is what the row
    says we run."""

    def __init__(
        self,
        lease: Lease,
        db: Database,
        server_id: str,
        interval: float,
        register: Callable[[Any], None],
        snapshot: Callable[[], tuple[str, str, int]],
    ):
        self.lease = lease
        self.db = db
        self.server_id = server_id
        self.interval = interval
        self.register = register
        self.snapshot = snapshot
        self.last_error: str | None = None
        self._status = ("online", "[]", 0)
        self._stop = False
        self._beat_now = False
        self._exited = False
        self._conn: Connection | None = None

    def refresh_status(self) -> None:
        """Called on the hub: the thread reads this tuple, never live dicts."""
        self._status = self.snapshot()

    def start(self) -> None:
        self.refresh_status()
        start_native_thread(self._thread_main, ())

    def announce(self) -> None:
        """Called on the hub when the queues we run changed: beat within the
        thread's next 0.1 s tick instead of at the next interval. Other
        servers wake our scanners only for the queues our row lists, so until
        then their wakes were lost (a task created through them waited for
        our next scan). The thread writes it, not the hub, so a beat with the
        old list can never land after the new one."""
        self.refresh_status()
        self._beat_now = True

    def stop(self, timeout: float) -> None:
        self._stop = True
        deadline = time.monotonic() + timeout
        while not self._exited and time.monotonic() < deadline:
            gevent.sleep(0.05)

    def _thread_main(self) -> None:
        try:
            while not self._stop:
                self._beat_once()
                self._sleep_interval()
        finally:
            self._close()
            self._exited = True

    def _beat_once(self) -> None:
        self._beat_now = False
        sent_at = time.monotonic()
        state, queues, running = self._status
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                if store.beat(cur, self.server_id, state, queues, running, self.db.address) == 0:
                    self.register(cur)
            self.lease.renew(sent_at)
            self.last_error = None
        except Exception as error:  # noqa: BLE001 - the thread must outlive any failure
            self.last_error = f"{type(error).__name__}: {error}"
            if self._conn is not None and isinstance(translate(error), DatabaseUnavailable):
                self.db.broken(self._conn)  # on a cluster, the next beat tries the next node
            # Whatever failed, a fresh connection next time is the safe bet.
            self._close()

    def _connect(self):
        # A black-holed heartbeat must fail fast: the lease is lapsing meanwhile.
        return self.db.connect(read_timeout=max(1.0, self.interval))

    def _sleep_interval(self) -> None:
        deadline = time.monotonic() + self.interval
        while not self._stop and not self._beat_now and time.monotonic() < deadline:
            native_sleep(min(0.1, self.interval))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead socket may raise anything
                pass


class LeaseWatch:
    """On the hub, every quarter second: stop our handlers when the lease
    lapses, and settle a lapse the hub slept through before claiming resumes."""

    def __init__(
        self,
        lease: Lease,
        stop_handlers: Callable[[type[BaseException]], int],
        running_count: Callable[[], int],
    ):
        self.lease = lease
        self.stop_handlers = stop_handlers
        self.running_count = running_count
        self._lease_was_valid = True
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def _loop(self) -> None:
        while True:
            self.watch_once()
            gevent.sleep(WATCH_EVERY)

    def watch_once(self) -> None:
        lease = self.lease
        if lease.expired():
            # Stop the handlers at the lapse, and any started since (a claim
            # whose reply came late): another server may rescue their tasks.
            if self._lease_was_valid:
                self._on_lease_lapsed("")
            elif self.running_count() > 0:
                self._on_lease_lapsed(", and handlers started since")
            self._lease_was_valid = False
            return
        if lease.lapse_unsettled():
            # Renewed after a lapse. If the hub was blocked through all of it,
            # this is the first we see of it: the handlers still run, and the
            # lease stays invalid (no claim) until they are stopped.
            if self._lease_was_valid:
                self._on_lease_lapsed(" while the event loop was blocked")
            elif self.running_count() > 0:
                self._on_lease_lapsed(", and handlers started since")
            lease.end_lapse()
            logger.warning("heartbeat lease renewed: claiming again")
        self._lease_was_valid = True

    def _on_lease_lapsed(self, how: str) -> None:
        stopped = self.stop_handlers(LeaseLost)
        logger.error(
            "heartbeat lease lapsed{} (no heartbeat reached the database for {:g}s): "
            "stopped {} running handlers and paused claiming, so another server can "
            "rescue their tasks safely",
            how,
            self.lease.ttl,
            stopped,
        )

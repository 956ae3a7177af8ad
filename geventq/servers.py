"""Liveness: the heartbeat that keeps this server's lease, the rescue of
tasks left `running` by dead servers, and the reconciliation of our own
claims that nobody runs.

The heartbeat runs in a native thread with its own connection, not in a
greenlet: a handler that blocks the hub (a CPU loop that never yields) must
not make a busy server look dead. The thread touches no gevent primitive and
logs nothing itself (loguru's lock is a greenlet lock once patched); it leaves
its last error for the maintenance greenlet to report.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import gevent
import ujson
from gevent import monkey
from loguru import logger

from geventq import store
from geventq.db import Database
from geventq.errors import DatabaseError, DatabaseUnavailable, GeventqError, LeaseLost
from geventq.logs import Throttle
from geventq.runtime import Runtime

native_sleep = monkey.get_original("time", "sleep")
start_native_thread = monkey.get_original("_thread", "start_new_thread")

# Our own claims older than this that nobody here runs are reconciled: the
# claim's COMMIT reached the database but its reply never reached us.
UNATTENDED_CLAIM_AGE = 10.0
RETENTION_EVERY = 60.0
RETENTION_BATCH = 1000
LOG_PRUNE_EVERY = 3600.0


class ServerAlreadyRunning(GeventqError):
    """Another live process holds this server_id."""


def this_host() -> str:
    return socket.gethostname()


def check_server_id_free(db: Database, server_id: str, heartbeat_timeout: float) -> None:
    """Refuse to start while another live process heartbeats under our id:
    recovering "our" orphans would steal its running tasks. A previous process
    of ours on this host that is gone (kill -9) does not count."""
    row = db.call(store.get_server, server_id)
    if row is None or row["state"] == "offline" or float(row["heartbeat_age"]) > heartbeat_timeout:
        return
    if row["host"] == this_host() and not _pid_alive(int(row["pid"])):
        return
    if row["host"] == this_host() and int(row["pid"]) == os.getpid():
        return
    raise ServerAlreadyRunning(
        f"executor.server_id {server_id!r} is already running on {row['host']} (pid {row['pid']}, "
        f"last heartbeat {float(row['heartbeat_age']):.1f}s ago); give this server another id")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Heartbeat:
    """Renews `servers.last_heartbeat` every heartbeat_interval from a native
    thread, and with it the runtime's lease."""

    def __init__(self, runtime: Runtime, snapshot: Callable[[], tuple[str, str, int]]):
        self.runtime = runtime
        self.interval = runtime.config.executor.heartbeat_interval
        self.snapshot = snapshot
        self.last_error: str | None = None
        self._status = ("online", "[]", 0)
        self._stop = False
        self._exited = False
        self._conn = None

    def refresh_status(self) -> None:
        """Called on the hub: the thread reads this tuple, never live dicts."""
        self._status = self.snapshot()

    def start(self) -> None:
        self.refresh_status()
        start_native_thread(self._thread_main, ())

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
        sent_at = time.monotonic()
        state, queues, running = self._status
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                if store.beat(cur, self.runtime.server_id, state, queues, running) == 0:
                    self._register(cur)
            self.runtime.lease.renew(sent_at)
            self.last_error = None
        except Exception as error:  # noqa: BLE001 - the thread must outlive any failure
            self.last_error = f"{type(error).__name__}: {error}"
            # Whatever failed, a fresh connection next time is the safe bet.
            self._close()

    def _register(self, cur) -> None:
        runtime = self.runtime
        store.register_server(cur, runtime.server_id, this_host(), os.getpid(),
                              runtime.admin_address, _version())

    def _connect(self):
        # A black-holed heartbeat must fail fast: the lease is lapsing meanwhile.
        return self.runtime.db.connect(read_timeout=max(1.0, self.interval))

    def _sleep_interval(self) -> None:
        deadline = time.monotonic() + self.interval
        while not self._stop and time.monotonic() < deadline:
            native_sleep(min(0.1, self.interval))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead socket may raise anything
                pass


def register(runtime: Runtime) -> None:
    """Write our row before anything runs; starts the lease."""
    sent_at = time.monotonic()
    runtime.db.call(store.register_server, runtime.server_id, this_host(), os.getpid(),
                    runtime.admin_address, _version())
    runtime.lease.renew(sent_at)


def recover_own_orphans(runtime: Runtime) -> int:
    """A restart under the same server_id: whatever the previous process left
    running is requeued at once, counted as an attempt."""
    total = 0
    for table_name, table in runtime.registered_tables.items():
        try:
            total += runtime.db.call(store.recover_own_orphans, table, runtime.server_id)
        except DatabaseError as error:
            logger.warning("recovering orphans in {}: {}", table_name, error)
    if total:
        logger.warning("requeued {} tasks left running by a previous process of {}", total, runtime.server_id)
    return total


def mark_offline(runtime: Runtime) -> None:
    runtime.db.retrying(store.mark_server_offline, runtime.server_id,
                        what="marking the server offline", attempts=20)


class Maintenance:
    """The hub side of liveness, every heartbeat_interval: report the thread's
    errors, rescue dead servers' tasks, reconcile our own unattended claims,
    apply retention; and, every quarter second, stop our handlers when the
    lease lapses."""

    def __init__(self, runtime: Runtime, heartbeat: Heartbeat):
        self.runtime = runtime
        self.heartbeat = heartbeat
        self.interval = runtime.config.executor.heartbeat_interval
        self._greenlets: list[gevent.Greenlet] = []
        self._lease_was_valid = True
        self._last_retention = 0.0
        self._last_log_prune = 0.0
        self._outages = Throttle(max(10.0, self.interval))

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._maintain_loop), gevent.spawn(self._lease_watch_loop)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=True, timeout=5)

    def _maintain_loop(self) -> None:
        while True:
            self.heartbeat.refresh_status()
            try:
                self.run_once()
            except DatabaseError as error:
                self._log_outage(error)
            except Exception:  # noqa: BLE001 - log and carry on: liveness must not die
                logger.exception("maintenance pass failed")
            gevent.sleep(self.interval)

    def run_once(self) -> None:
        if self.heartbeat.last_error:
            self._log_outage(self.heartbeat.last_error)
        job_log_error, self.runtime.job_logs.last_error = self.runtime.job_logs.last_error, None
        if job_log_error:
            logger.warning("could not write a job log: {}", job_log_error)
        if not self.runtime.lease.valid():
            return
        self.rescue_dead_servers()
        self.reconcile_unattended_claims()
        if time.monotonic() - self._last_retention > RETENTION_EVERY:
            self._last_retention = time.monotonic()
            self.apply_retention()
        if time.monotonic() - self._last_log_prune > LOG_PRUNE_EVERY:
            self._last_log_prune = time.monotonic()
            self.runtime.job_logs.prune(self.runtime.config.log.retention_days)

    def rescue_dead_servers(self) -> int:
        """Requeue the attempts of servers that were dead when we looked. The
        decision's moment bounds the rescue (see store.rescue_dead_servers_tasks),
        so a server that renews its heartbeat meanwhile keeps its new claims."""
        runtime = self.runtime
        decided_at, alive = runtime.db.call(store.rescue_decision,
                                            runtime.config.executor.heartbeat_timeout)
        rescued = 0
        for table_name, table in list(runtime.registered_tables.items()):
            try:
                count = runtime.db.call(store.rescue_dead_servers_tasks, table, decided_at, alive)
            except DatabaseUnavailable:
                raise
            except DatabaseError as error:
                logger.warning("rescue in {} failed: {}", table_name, error)
                continue
            if count:
                logger.warning("rescued {} tasks in {} from servers whose heartbeat expired "
                               "(claimed before {})", count, table_name, decided_at)
                rescued += count
                runtime.listeners.rescued(table_name, count)
        return rescued

    def reconcile_unattended_claims(self) -> int:
        """Requeue our own status-1 rows that nothing here runs. Every
        registered table, not only the queues we run now: a lapse stops the
        handlers of a queue that may then move to another server, and their
        rows stay ours (we are alive, so nobody rescues them) until we look."""
        runtime = self.runtime
        runners = {runner.table_name: runner for runner in runtime.all_runners()}
        requeued = 0
        for table_name, table in list(runtime.registered_tables.items()):
            runner = runners.get(table_name)
            # A claim in flight may be the very one whose rows look unattended
            # (its reply is slow, not lost): its rows would start once it
            # returns. Rows claimed after this check are too young to match.
            if runner is not None and runner.claim_in_flight:
                continue
            requeued += self._requeue_unattended(table_name, table)
        return requeued

    def _requeue_unattended(self, table_name: str, table) -> int:
        runtime = self.runtime
        requeued = 0
        rows = runtime.db.call(store.find_own_claims, table, runtime.server_id, UNATTENDED_CLAIM_AGE)
        for row in rows:
            if runtime.claimed.holds(table_name, row["id"]):
                continue
            requeued += runtime.db.call(store.requeue_unattended_claim, table, runtime.server_id,
                                        row["id"], row["retry_count"], UNATTENDED_CLAIM_AGE)
            logger.warning("task {}-{} was claimed by us but is not running here; requeued",
                           table_name, row["id"])
        return requeued

    def apply_retention(self) -> None:
        """Delete finished tasks past each queue's retention_days, in small
        batches, on one server at a time (a named lock decides which)."""
        runtime = self.runtime
        keep_days = {name: days for name, days in runtime.retention_days.items() if days > 0}
        if not keep_days:
            return
        with runtime.db.connection() as conn, conn.cursor() as cur:
            if not store.try_lock(cur, "geventq_retention"):
                return
            try:
                for table_name, days in keep_days.items():
                    table = runtime.registered_tables.get(table_name)
                    if table is not None:
                        self._delete_expired(cur, table_name, table, days)
            finally:
                store.release_lock(cur, "geventq_retention")

    def _delete_expired(self, cur, table_name: str, table, days: int) -> None:
        deleted = 0
        while True:
            count = store.delete_finished_tasks(cur, table, days, RETENTION_BATCH)
            deleted += count
            if count < RETENTION_BATCH:
                break
            gevent.sleep(0.05)  # let claims in between: short locks, never a long one
        if deleted:
            logger.info("retention: deleted {} finished tasks older than {} days from {}",
                        deleted, days, table_name)

    def _lease_watch_loop(self) -> None:
        while True:
            self.watch_lease_once()
            gevent.sleep(0.25)

    def watch_lease_once(self) -> None:
        lease, runtime = self.runtime.lease, self.runtime
        if lease.expired():
            # Stop the handlers at the lapse, and any started since (a claim
            # whose reply came late): another server may rescue their tasks.
            if self._lease_was_valid:
                self._on_lease_lapsed("")
            elif runtime.running_count() > 0:
                self._on_lease_lapsed(", and handlers started since")
            self._lease_was_valid = False
            return
        if lease.lapse_unsettled():
            # Renewed after a lapse. If the hub was blocked through all of it,
            # this is the first we see of it: the handlers still run, and the
            # lease stays invalid (no claim) until they are stopped.
            if self._lease_was_valid:
                self._on_lease_lapsed(" while the event loop was blocked")
            elif runtime.running_count() > 0:
                self._on_lease_lapsed(", and handlers started since")
            lease.end_lapse()
            logger.warning("heartbeat lease renewed: claiming again")
        self._lease_was_valid = True

    def _on_lease_lapsed(self, how: str) -> None:
        stopped = sum(runner.stop_handlers(LeaseLost) for runner in self.runtime.all_runners())
        logger.error("heartbeat lease lapsed{} (no heartbeat reached the database for {:g}s): "
                     "stopped {} running handlers and paused claiming, so another server can "
                     "rescue their tasks safely", how, self.runtime.lease.ttl, stopped)

    def _log_outage(self, error) -> None:
        if self._outages.ready():
            logger.warning("database {} unreachable: {}", self.runtime.db.address, error)


def status_snapshot(runtime: Runtime) -> tuple[str, str, int]:
    return (runtime.state, ujson.dumps(sorted(runtime.runners)), runtime.running_count())


def _version() -> str:
    from geventq import __version__
    return __version__

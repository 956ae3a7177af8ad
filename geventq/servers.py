"""Servers: registration in the `servers` table, the rescue of tasks left
`running` by dead servers (`Rescue`), the reconciliation of our own claims
that nobody runs (`Reconcile`), and the maintenance pass that runs them every
heartbeat_interval. The lease and the heartbeat thread are in lease.py."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import gevent
from loguru import logger

from geventq import store
from geventq.attempts import ClaimedAttempts, Listeners
from geventq.catalog import QueueCatalog
from geventq.db import Database, Nodes, QuotedTable
from geventq.errors import DatabaseError, DatabaseUnavailable, GeventqError
from geventq.housekeeping import Housekeeping
from geventq.lease import Heartbeat, Lease
from geventq.logs import JobLogs, Throttle
from geventq.queues import RunningQueues

# Our own claims older than this that nobody here runs are reconciled: the
# claim's COMMIT reached the database but its reply never reached us.
UNATTENDED_CLAIM_AGE = 10.0


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
        f"last heartbeat {float(row['heartbeat_age']):.1f}s ago); give this server another id"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registration:
    """This process's row in `servers`."""

    def __init__(self, server_id: str, admin_address: str, nodes: Nodes):
        self.server_id = server_id
        self.admin_address = admin_address
        self.nodes = nodes  # the row says which database node we use

    def write(self, cur) -> None:
        """Also what the heartbeat runs when our row was deleted under us."""
        store.register_server(
            cur, self.server_id, this_host(), os.getpid(), self.admin_address, _version(), self.nodes.current
        )

    def register(self, db: Database, lease: Lease) -> None:
        """Write our row before anything runs; starts the lease."""
        sent_at = time.monotonic()
        db.call(self.write)
        lease.renew(sent_at)

    def mark_offline(self, db: Database) -> None:
        db.retrying(store.mark_server_offline, self.server_id, what="marking the server offline", attempts=20)


def recover_own_orphans(db: Database, server_id: str, tables: Mapping[str, QuotedTable]) -> int:
    """A restart under the same server_id: whatever the previous process left
    running is requeued at once, counted as an attempt."""
    total = 0
    for table_name, table in tables.items():
        try:
            total += db.call(store.recover_own_orphans, table, table_name, server_id, transaction=True)
        except DatabaseError as error:
            logger.warning("recovering orphans in {}: {}", table_name, error)
    if total:
        logger.warning("requeued {} tasks left running by a previous process of {}", total, server_id)
    return total


class Rescue:
    """Requeues (or fails) the attempts of servers whose heartbeat expired."""

    def __init__(self, db: Database, catalog: QueueCatalog, listeners: Listeners, heartbeat_timeout: float):
        self.db = db
        self.catalog = catalog
        self.listeners = listeners
        self.heartbeat_timeout = heartbeat_timeout

    def rescue_dead_servers(self) -> int:
        """Requeue the attempts of servers that were dead when we looked. The
        decision's moment bounds the rescue (see store.rescue_dead_servers_tasks),
        so a server that renews its heartbeat meanwhile keeps its new claims."""
        decided_at, alive = self.db.call(store.rescue_decision, self.heartbeat_timeout)
        rescued = 0
        for table_name, table in list(self.catalog.tables.items()):
            try:
                count = self.db.call(
                    store.rescue_dead_servers_tasks, table, table_name, decided_at, alive, transaction=True
                )
            except DatabaseUnavailable:
                raise
            except DatabaseError as error:
                logger.warning("rescue in {} failed: {}", table_name, error)
                continue
            if count:
                logger.warning(
                    "rescued {} tasks in {} from servers whose heartbeat expired (claimed before {})",
                    count,
                    table_name,
                    decided_at,
                )
                rescued += count
                self.listeners.rescued(table_name, count)
        return rescued


class Reconcile:
    """Requeues our own status-1 rows that nothing here runs: a claim whose
    COMMIT reached the database but whose reply never reached us."""

    def __init__(
        self,
        db: Database,
        server_id: str,
        catalog: QueueCatalog,
        queues: RunningQueues,
        claimed: ClaimedAttempts,
    ):
        self.db = db
        self.server_id = server_id
        self.catalog = catalog
        self.queues = queues
        self.claimed = claimed

    def reconcile_unattended_claims(self) -> int:
        """Every registered table, not only the queues we run now: a lapse
        stops the handlers of a queue that may then move to another server,
        and their rows stay ours (we are alive, so nobody rescues them) until
        we look."""
        claiming = {runner.table_name for runner in self.queues if runner.claim_in_flight}
        requeued = 0
        for table_name, table in list(self.catalog.tables.items()):
            # A claim in flight may be the very one whose rows look unattended
            # (its reply is slow, not lost): its rows would start once it
            # returns. Rows claimed after this check are too young to match.
            if table_name in claiming:
                continue
            requeued += self._requeue_unattended(table_name, table)
        return requeued

    def _requeue_unattended(self, table_name: str, table: QuotedTable) -> int:
        requeued = 0
        rows = self.db.call(store.find_own_claims, table, self.server_id, UNATTENDED_CLAIM_AGE)
        for row in rows:
            if self.claimed.holds(table_name, row["id"]):
                continue
            requeued += self.db.call(
                store.requeue_unattended_claim,
                table,
                table_name,
                self.server_id,
                row["id"],
                row["retry_count"],
                UNATTENDED_CLAIM_AGE,
                transaction=True,
            )
            logger.warning(
                "task {}-{} was claimed by us but is not running here; requeued", table_name, row["id"]
            )
        return requeued


class Maintenance:
    """The hub side of liveness, every heartbeat_interval: report the
    heartbeat thread's errors, rescue dead servers' tasks, reconcile our own
    unattended claims, and run the housekeeping that is due."""

    def __init__(
        self,
        *,
        heartbeat: Heartbeat,
        lease: Lease,
        job_logs: JobLogs,
        rescue: Rescue,
        reconcile: Reconcile,
        housekeeping: Housekeeping,
        interval: float,
        db_address: str,
    ):
        self.heartbeat = heartbeat
        self.lease = lease
        self.job_logs = job_logs
        self.rescue = rescue
        self.reconcile = reconcile
        self.housekeeping = housekeeping
        self.interval = interval
        self.db_address = db_address
        self._greenlet: gevent.Greenlet | None = None
        self._outages = Throttle(max(10.0, self.interval))

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._maintain_loop)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

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
        job_log_error, self.job_logs.last_error = self.job_logs.last_error, None
        if job_log_error:
            logger.warning("could not write a job log: {}", job_log_error)
        if not self.lease.valid():
            return
        self.rescue.rescue_dead_servers()
        self.reconcile.reconcile_unattended_claims()
        self.housekeeping.run_due()

    def _log_outage(self, error) -> None:
        if self._outages.ready():
            logger.warning("database {} unreachable: {}", self.db_address, error)


def _version() -> str:
    from geventq import __version__

    return __version__

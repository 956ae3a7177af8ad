"""Start-up and shutdown order of one executor process, and nothing else.

The parts are built in dependency order and each is handed only what it
uses; the executor keeps them to start and stop them in the right order."""

from __future__ import annotations

import signal
import time
from typing import Any

import gevent
import ujson
from gevent import GreenletExit
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from loguru import logger

from geventq import admin, logs, monitor, schema, servers, store
from geventq.attempts import Attempt, ClaimedAttempts, Listeners
from geventq.cancels import CancelWatch
from geventq.catalog import QueueCatalog
from geventq.claims import Claimer, use_skip_locked
from geventq.config import Config
from geventq.db import Database, Nodes, wait_until_reachable
from geventq.errors import GeventqError
from geventq.firing import ScheduleFirer
from geventq.handlers import load_handlers
from geventq.housekeeping import Housekeeping
from geventq.identity import Identity
from geventq.lease import Heartbeat, Lease, LeaseWatch
from geventq.metrics import Metrics
from geventq.outcomes import OutcomeRecorder
from geventq.peers import Peers
from geventq.producer import Producer, Target
from geventq.queues import QueueRunner, RunningQueues
from geventq.running import AttemptRunner
from geventq.servers import Maintenance, Reconcile, Registration, Rescue
from geventq.sync import QueueSync

# "A database that cannot be reached at start-up stops it within 15 s."
STARTUP_DB_DEADLINE = 10.0


class Executor:
    def __init__(self, config: Config):
        self.config = config
        self.state = "starting"
        self._stop_requested = Event()
        self._started = False
        self._stopped = False

    # --- start-up ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        # First of all: a SIGTERM during start-up then means "stop once
        # started", drained like any other, instead of killing the process.
        gevent.signal_handler(signal.SIGTERM, self.request_stop)
        gevent.signal_handler(signal.SIGINT, self.request_stop)
        self.job_logs = logs.configure(cfg.log)
        monitor.install(cfg.executor)
        handlers = load_handlers(cfg.handlers.paths)
        # Reach the server first, without the database: it may not exist yet.
        # One Nodes for every pool: they fail over to the next node together.
        self.nodes = Nodes(cfg.database.nodes())
        reach = Database(cfg.database, database=None, size=1, nodes=self.nodes)
        wait_until_reachable(reach, STARTUP_DB_DEADLINE)
        schema.ensure_schema(cfg, self.nodes)
        self.db = Database(cfg.database, name="core", nodes=self.nodes)
        version = self.db.call(store.server_version)
        servers.check_server_id_free(self.db, cfg.executor.server_id, cfg.executor.heartbeat_timeout)
        self.identity = Identity(cfg.executor.server_id, cfg, self._bind_admin())
        cluster = self.db.call(store.is_galera)
        self._build(handlers, use_skip_locked(cfg.database.claim_mode, version), cluster)
        self._http.start()
        self._claim_orphans_and_register()
        self._start_background()
        self._started = True
        self.state = "online"
        logger.info(
            "geventq {} started: server_id={} database={}/{} ({}, claims with {}), "
            "admin on http://{}, handlers: {}",
            _version(),
            self.identity.server_id,
            self.db.address,
            cfg.database.database,
            version,
            self.claimer.method,
            self.identity.admin_address,
            ", ".join(sorted(handlers)) or "none",
        )

    def _bind_admin(self) -> str:
        """Listen on the admin port now, so a port in use stops start-up
        before anything registers; the address other servers call."""
        cfg = self.config.admin
        self._http = WSGIServer((cfg.host, cfg.port), None, log=None, error_log=None)
        try:
            self._http.init_socket()  # binds and listens; start() serves on it later
        except OSError as error:
            reason = error.strerror or error
            raise GeventqError(f"admin.port: cannot listen on {cfg.host}:{cfg.port}: {reason}") from error
        host, port = self._http.address[:2]
        # Peers call this address: a wildcard bind is reachable by host name.
        if host in ("0.0.0.0", "::", ""):
            host = servers.this_host()
        return f"{host}:{port}"

    def _build(self, handlers: dict[str, Any], skip_locked: bool, cluster: bool) -> None:
        """Every part, in dependency order, each given only what it uses."""
        cfg, db, server_id, nodes = self.config, self.db, self.identity.server_id, self.nodes
        self.claim_db = Database(cfg.database, name="claims", autocommit=False, nodes=self.nodes)
        self.handler_db = Database(cfg.database, name="handlers", nodes=self.nodes)
        self.lease = Lease(cfg.executor.heartbeat_timeout / 2)
        self.claimed = ClaimedAttempts()
        self.listeners = Listeners()
        self.catalog = QueueCatalog()
        self.queues = RunningQueues()
        self.recorder = OutcomeRecorder(
            db, server_id, self.claimed, cfg.queue.completion_flush_interval, self.queues.outcomes_written
        )
        self.claimer = Claimer(
            db,
            self.claim_db,
            server_id,
            tuple(handlers),
            skip_locked,
            cluster=cluster,
            heartbeat_timeout=cfg.executor.heartbeat_timeout,
        )
        peers = Peers(db, server_id, cfg.executor.heartbeat_timeout, cfg.admin.token)

        def tasks_added(table_name: str) -> None:
            """Due work was just committed: scan now, here and on the servers running it."""
            runner = self.queues.for_table(table_name)
            if runner is not None:
                runner.wake()
            peers.wake(table_name)

        def producer_added(target: Target) -> None:
            tasks_added(target.table_name)

        attempts = AttemptRunner(
            handlers=handlers,
            job_logs=self.job_logs,
            recorder=self.recorder,
            claimed=self.claimed,
            listeners=self.listeners,
            server_id=server_id,
            config=cfg,
            handler_db=self.handler_db,
            producer=Producer(self.handler_db, on_added=producer_added),
        )

        def make_runner(row: dict[str, Any]) -> QueueRunner:
            return QueueRunner(
                row,
                claimer=self.claimer,
                lease=self.lease,
                claimed=self.claimed,
                listeners=self.listeners,
                attempts=attempts,
            )

        self.sync = QueueSync(
            db,
            self.catalog,
            self.queues,
            server_id=server_id,
            interval=cfg.queue.config_sync_interval,
            run_queues=cfg.queue.enable,
            make_runner=make_runner,
            running_changed=lambda: self.heartbeat.announce(),
        )
        metrics = Metrics(
            server_id=server_id,
            db=db,
            catalog=self.catalog,
            running=self.queues,
            lease=self.lease,
            outcome_backlog=lambda: self.recorder.backlog,
            token=cfg.admin.token if cfg.admin.metrics_auth else "",
        )
        self.listeners.add(metrics)
        self.cancel_watch = CancelWatch(db, server_id, self.claimed)
        self.firer: ScheduleFirer | None = None
        if cfg.queue.enable:
            self.firer = ScheduleFirer(
                db=db,
                # A fire holds its schedule's row lock: a connection cut off
                # mid-fire must not keep it, so the server drops one silent for 10 s.
                fire_db=Database(
                    cfg.database, name="schedules", size=2, autocommit=False, idle_timeout=10, nodes=nodes
                ),
                lease=self.lease,
                skip_locked=skip_locked,
                tasks_added=tasks_added,
                listener=metrics,
            )
        routes = admin.Admin(
            db=db,
            server_id=server_id,
            heartbeat_timeout=cfg.executor.heartbeat_timeout,
            catalog=self.catalog,
            queues=self.queues,
            job_logs=self.job_logs,
            peers=peers,
            tasks_added=tasks_added,
            queues_changed=self.sync.wake,
            check_cancels=self.cancel_watch.wake,
            schedules_changed=self.firer.wake if self.firer is not None else lambda: None,
        )
        self._http.application = admin.create_app(routes, cfg.admin.token, metrics.routes())
        self.registration = Registration(server_id, self.identity.admin_address, self.nodes)

    def _claim_orphans_and_register(self) -> None:
        # Only learn the registered tables: nothing may claim yet.
        self.sync.read_catalog()
        servers.recover_own_orphans(self.db, self.identity.server_id, self.catalog.tables)
        self.registration.register(self.db, self.lease)

    def _start_background(self) -> None:
        cfg, db = self.config, self.db
        self.recorder.start()
        self.heartbeat = Heartbeat(
            self.lease,
            db,
            self.identity.server_id,
            cfg.executor.heartbeat_interval,
            self.registration.write,
            self.status_snapshot,
        )
        self.heartbeat.start()
        self.lease_watch = LeaseWatch(self.lease, self.queues.stop_handlers, self.queues.running_count)
        self.lease_watch.start()
        self.maintenance = Maintenance(
            heartbeat=self.heartbeat,
            lease=self.lease,
            job_logs=self.job_logs,
            rescue=Rescue(db, self.catalog, self.listeners, cfg.executor.heartbeat_timeout),
            reconcile=Reconcile(db, self.identity.server_id, self.catalog, self.queues, self.claimed),
            housekeeping=Housekeeping(
                db, self.job_logs, cfg.log.retention_days, self.catalog, cfg.queue.schedule_history_days
            ),
            interval=cfg.executor.heartbeat_interval,
            db_address=db.address,
        )
        self.maintenance.start()
        self.cancel_watch.start()
        self.sync.start()
        if self.firer is not None:
            self.firer.start()

    def status_snapshot(self) -> tuple[str, str, int]:
        """What our `servers` row says: state, the queues we run, running handlers."""
        return (self.state, ujson.dumps(self.queues.names()), self.queues.running_count())

    # --- running ---------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Signal handlers only set the stop event; the main greenlet does the rest."""
        self._stop_requested.set()

    def run(self) -> int:
        self.start()
        self._stop_requested.wait()
        self.shutdown()
        return 0

    # --- shutdown --------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop claiming, drain, hand back what did not finish, go offline.
        Heartbeats continue until the end so nobody rescues our draining tasks."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        self.state = "draining"
        self.heartbeat.refresh_status()
        logger.info(
            "shutting down: draining {} running tasks (up to {:g}s)",
            self.queues.running_count(),
            self.config.executor.shutdown_timeout,
        )
        if self.firer is not None:
            self.firer.stop()
        self.sync.stop()
        self._drain_runners()
        self.cancel_watch.stop()
        self.recorder.stop(timeout=10)
        self._release_unfinished()
        self.maintenance.stop()
        self.lease_watch.stop()
        self.heartbeat.stop(timeout=self.config.database.read_timeout)
        self.registration.mark_offline(self.db)
        self._http.stop(timeout=1)
        self.job_logs.stop()
        for pool in (self.db, self.claim_db, self.handler_db):
            pool.close()
        if self.firer is not None:
            self.firer.fire_db.close()
        logger.info("server {} stopped", self.identity.server_id)

    def _drain_runners(self) -> None:
        deadline = time.monotonic() + self.config.executor.shutdown_timeout
        runners = list(self.queues)
        for runner in runners:
            runner.stop_claiming()
        for runner in runners:
            runner.drain(timeout=max(0.0, deadline - time.monotonic()))
        killed = sum(runner.stop_handlers(GreenletExit) for runner in runners)
        if killed:
            logger.warning("stopped {} tasks still running after shutdown_timeout", killed)

    def _release_unfinished(self) -> None:
        """Attempts that never finished go back to pending, not counted as an
        attempt (retry_count unchanged)."""
        unfinished: dict[tuple, list[Attempt]] = {}
        for attempt in self.claimed.unfinished():
            unfinished.setdefault((attempt.table, attempt.retry_count), []).append(attempt)
        for (table, retry_count), attempts in unfinished.items():
            ids = [attempt.id for attempt in attempts]
            released = self.db.retrying(
                store.release_tasks,
                table,
                attempts[0].table_name,
                self.identity.server_id,
                retry_count,
                ids,
                what="returning unfinished tasks",
                transaction=True,
                attempts=20,
            )
            logger.info("returned {} unfinished tasks of {} to pending", released, attempts[0].table_name)


def _version() -> str:
    from geventq import __version__

    return __version__

"""Start-up and shutdown order of one executor process, and nothing else."""

from __future__ import annotations

import signal
import time
from typing import Any

import gevent
from gevent import GreenletExit
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from loguru import logger

from geventq import admin, logs, monitor, schema, servers, store
from geventq.attempts import Attempt
from geventq.config import Config
from geventq.db import Database, wait_until_reachable
from geventq.errors import GeventqError
from geventq.handlers import load_handlers
from geventq.housekeeping import Housekeeping
from geventq.lease import Heartbeat, Lease, LeaseWatch
from geventq.metrics import Metrics
from geventq.outcomes import OutcomeRecorder
from geventq.queues import choose_claim
from geventq.runtime import Runtime
from geventq.sync import QueueSync

# "A database that cannot be reached at start-up stops it within 15 s."
STARTUP_DB_DEADLINE = 10.0


class Executor:
    def __init__(self, config: Config):
        self.config = config
        self.runtime: Runtime | None = None
        self._stop_requested = Event()
        self._stopped = False
        self._http: WSGIServer | None = None

    # --- start-up ---------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        # First of all: a SIGTERM during start-up then means "stop once
        # started", drained like any other, instead of killing the process.
        gevent.signal_handler(signal.SIGTERM, self.request_stop)
        gevent.signal_handler(signal.SIGINT, self.request_stop)
        job_logs = logs.configure(cfg.log)
        monitor.install(cfg.executor)
        handlers = load_handlers(cfg.handlers.paths)
        # Reach the server first, without the database: it may not exist yet.
        wait_until_reachable(Database(cfg.database, database=None, size=1), STARTUP_DB_DEADLINE)
        schema.ensure_schema(cfg)
        db = Database(cfg.database, name="core")
        version = db.call(store.server_version)
        runtime = self.runtime = Runtime(
            config=cfg, server_id=cfg.executor.server_id, db=db,
            claim_db=Database(cfg.database, name="claims", autocommit=False),
            handler_db=Database(cfg.database, name="handlers"), handlers=handlers,
            job_logs=job_logs, lease=Lease(cfg.executor.heartbeat_timeout / 2),
            skip_locked=_use_skip_locked(cfg.database.claim_mode, version),
        )
        runtime.metrics = Metrics(runtime)
        runtime.listeners.add(runtime.metrics)
        servers.check_server_id_free(db, runtime.server_id, cfg.executor.heartbeat_timeout)
        self._serve_admin()
        self._claim_orphans_and_register()
        self._start_background()
        runtime.state = "online"
        logger.info("geventq {} started: server_id={} database={}/{} ({}, claims with {}), "
                    "admin on http://{}, handlers: {}",
                    _version(), runtime.server_id, db.address,
                    cfg.database.database, version,
                    "SKIP LOCKED" if runtime.skip_locked else "conditional UPDATE",
                    runtime.admin_address, ", ".join(sorted(handlers)) or "none")

    def _serve_admin(self) -> None:
        cfg = self.config.admin
        self._http = WSGIServer((cfg.host, cfg.port), admin.create_app(self.runtime), log=None,
                                error_log=None)
        try:
            self._http.start()
        except OSError as error:
            reason = error.strerror or error
            raise GeventqError(f"admin.port: cannot listen on {cfg.host}:{cfg.port}: {reason}") from error
        host, port = self._http.address[:2]
        # Peers call this address: a wildcard bind is reachable by host name.
        if host in ("0.0.0.0", "::", ""):
            host = servers.this_host()
        self.runtime.admin_address = f"{host}:{port}"

    def _claim_orphans_and_register(self) -> None:
        runtime = self.runtime
        sync = QueueSync(runtime, choose_claim(runtime.skip_locked))
        sync.run_queues = False  # only learn the registered tables: nothing may claim yet
        sync.sync_once()
        servers.recover_own_orphans(runtime)
        servers.register(runtime)

    def _start_background(self) -> None:
        runtime = self.runtime
        runtime.recorder = OutcomeRecorder(runtime, self.config.queue.completion_flush_interval)
        runtime.recorder.start()
        cfg = self.config
        self.heartbeat = Heartbeat(runtime.lease, runtime.db, runtime.server_id,
                                   cfg.executor.heartbeat_interval, servers.write_registration(runtime),
                                   lambda: servers.status_snapshot(runtime))
        self.heartbeat.start()
        self.lease_watch = LeaseWatch(runtime.lease, runtime.stop_all_handlers, runtime.running_count)
        self.lease_watch.start()
        housekeeping = Housekeeping(runtime.db, runtime.job_logs, cfg.log.retention_days,
                                    lambda: runtime.retention_days, lambda: runtime.registered_tables)
        self.maintenance = servers.Maintenance(runtime, self.heartbeat, housekeeping)
        self.maintenance.start()
        self.sync = runtime.sync = QueueSync(runtime, choose_claim(runtime.skip_locked))
        self.sync.start()

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
        if self._stopped or self.runtime is None:
            return
        self._stopped = True
        runtime = self.runtime
        runtime.state = "draining"
        self.heartbeat.refresh_status()
        logger.info("shutting down: draining {} running tasks (up to {:g}s)",
                    runtime.running_count(), self.config.executor.shutdown_timeout)
        self.sync.stop()
        self._drain_runners()
        runtime.recorder.stop(timeout=10)
        self._release_unfinished()
        self.maintenance.stop()
        self.lease_watch.stop()
        self.heartbeat.stop(timeout=self.config.database.read_timeout)
        servers.mark_offline(runtime)
        self._http.stop(timeout=1)
        runtime.job_logs.stop()
        for pool in (runtime.db, runtime.claim_db, runtime.handler_db):
            pool.close()
        logger.info("server {} stopped", runtime.server_id)

    def _drain_runners(self) -> None:
        deadline = time.monotonic() + self.config.executor.shutdown_timeout
        runners = self.runtime.all_runners()
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
        runtime = self.runtime
        unfinished: dict[tuple, list[Attempt]] = {}
        for attempt in runtime.claimed.unfinished():
            unfinished.setdefault((attempt.table, attempt.retry_count), []).append(attempt)
        for (table, retry_count), attempts in unfinished.items():
            ids = [attempt.id for attempt in attempts]
            released = runtime.db.retrying(store.release_tasks, table, runtime.server_id, retry_count,
                                           ids, what="returning unfinished tasks", attempts=20)
            logger.info("returned {} unfinished tasks of {} to pending", released,
                        attempts[0].table_name)


def _version() -> str:
    from geventq import __version__
    return __version__


def _use_skip_locked(claim_mode: str, version: str) -> bool:
    if claim_mode == "auto":
        return store.supports_skip_locked(version)
    return claim_mode == "skip_locked"

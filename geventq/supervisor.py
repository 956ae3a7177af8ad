"""`geventq run --processes N`: one process per core, looked after.

The supervisor is not monkey-patched (geventq.__main__ starts it before
patching): it runs no greenlets, only child processes, signals and a small
loop. Each child is an ordinary executor, `python -m geventq run` with
`--server-id <id>-k` and `--admin-port port+k-1`, so it drains, heartbeats,
rescues and logs exactly as a single executor does; the supervisor adds what
one process cannot do for itself:

- a child that exits is replaced after a backoff (geventq.restarts), and the
  tasks it left running are requeued at once (geventq.supervisor_db);
- a child whose heartbeat is stale (alive but not working: stopped, stuck in
  a C call) is killed with SIGKILL and replaced the same way;
- more than 5 restarts in 60 s stop everything with exit code 1;
- SIGTERM/SIGINT send SIGTERM to every child and wait for their drain; a
  second signal, or shutdown_timeout + 5 s, kills the rest.

Children get their own session, so a Ctrl-C in a terminal reaches only the
supervisor, which decides what the children get. They are told its pid and
drain themselves should it die (geventq.parent).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from geventq import pidfile
from geventq.config import Config
from geventq.errors import DatabaseError
from geventq.restarts import RestartPolicy
from geventq.supervisor_db import SupervisorDatabase

DRAINED, CRASH_LOOP = 0, 1
POLL_INTERVAL = 0.1
# After shutdown_timeout the children stop their handlers and hand tasks
# back; this leaves them time to write that before they are killed.
KILL_GRACE = 5.0
# A child that has not registered in `servers` by then is stuck in start-up
# (an executor that cannot reach the database stops itself within 15 s).
STARTUP_DEADLINE = 60.0
FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | supervisor | {message}"


@dataclass
class Child:
    slot: int  # 1..N
    server_id: str
    admin_port: int
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    start_at: float = 0.0  # monotonic time of its next start, while it is not running
    registered: bool = False  # its row in `servers` carries its pid
    kill_reason: str = ""  # why the supervisor killed it, for the exit's log line

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Supervisor:
    config: Config
    processes: int
    executor_args: list[str]  # options every child gets (config file, handlers)
    db: SupervisorDatabase
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: list[Child] = field(init=False)
    signals: int = 0
    _db_ok_since: float | None = None
    _next_check: float = 0.0

    def __post_init__(self) -> None:
        base_id, port = self.config.executor.server_id, self.config.admin.port
        self.children = [
            # admin.port 0 (any free port) stays 0 for every child
            Child(slot, f"{base_id}-{slot}", port + slot - 1 if port else 0)
            for slot in range(1, self.processes + 1)
        ]

    # --- running -----------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        logger.info(
            "supervisor pid {} starting {} executors: {}",
            os.getpid(),
            self.processes,
            ", ".join(child.server_id for child in self.children),
        )
        code = DRAINED
        try:
            while not self.signals:
                if not self._look_after_children(time.monotonic()):
                    code = CRASH_LOOP
                    break
                time.sleep(POLL_INTERVAL)
        finally:
            self._stop_children()
            self.db.close()
        if code == CRASH_LOOP:
            message = (
                f"executors keep exiting ({self.policy.crash_loop.describe()}): stopped them all; "
                "their output above says why"
            )
            logger.error(message)
            print(f"geventq: {message}", file=sys.stderr)
        else:
            logger.info("supervisor stopped: every executor drained")
        return code

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only counted here; the loop acts on it (a second one kills the rest).
        self.signals += 1

    def _look_after_children(self, now: float) -> bool:
        """One pass of the loop; False when restarts have become a crash loop."""
        for child in self.children:
            exited = child.process is not None and not child.running()
            if exited and not self._replace(child, now):
                return False
        if now >= self._next_check:
            self._next_check = now + self.config.executor.heartbeat_interval
            self._check_heartbeats(now)
        for child in self.children:
            if child.process is None and now >= child.start_at:
                self._start(child, now)
        return True

    def _start(self, child: Child, now: float) -> None:
        args = [
            sys.executable,
            "-m",
            "geventq",
            "run",
            *self.executor_args,
            "--server-id",
            child.server_id,
            "--admin-port",
            str(child.admin_port),
            "--supervisor-pid",
            str(os.getpid()),
        ]
        child.process = subprocess.Popen(args, start_new_session=True)
        child.started_at, child.registered, child.kill_reason = now, False, ""
        logger.info("started {} (pid {})", child.server_id, child.pid)

    def _replace(self, child: Child, now: float) -> bool:
        """A child exited: rescue its tasks, then start it again after its backoff."""
        assert child.process is not None
        code, lived = child.process.returncode, now - child.started_at
        how = child.kill_reason or f"exited with code {code}"
        logger.warning("{} (pid {}) {}, {:.1f}s after its start", child.server_id, child.pid, how, lived)
        child.process = None
        self._rescue(child)
        if self.policy.is_crash_loop(now):
            return False
        delay = self.policy.restart_delay(child.slot, lived)
        child.start_at = now + delay
        logger.info("restarting {} in {:g}s", child.server_id, delay)
        return True

    def _rescue(self, child: Child) -> None:
        rescued = self.db.rescue(child.server_id)
        if rescued:
            logger.warning("requeued {} tasks {} left running", rescued, child.server_id)

    # --- liveness ---------------------------------------------------------------

    def _check_heartbeats(self, now: float) -> None:
        try:
            beats = self.db.heartbeats([child.server_id for child in self.children])
        except DatabaseError as error:
            if self._db_ok_since is not None:
                logger.warning("cannot read the executors' heartbeats: {}", error)
            self._db_ok_since = None
            return
        if self._db_ok_since is None:
            self._db_ok_since = now
        timeout = self.config.executor.heartbeat_timeout
        # Judge a heartbeat only once we could read the database for a whole
        # heartbeat_timeout: after an outage every child looks stale until its
        # next beat, and killing them for our own outage would help nobody.
        judged = now - self._db_ok_since >= timeout
        for child in self.children:
            if not child.running():
                continue
            beat = beats.get(child.server_id)
            child.registered = beat is not None and beat.pid == child.pid
            if judged and child.registered and beat is not None and beat.age > timeout:
                self._kill(child, f"was killed: heartbeat stale for {beat.age:.1f}s")
            elif judged and not child.registered and now - child.started_at > STARTUP_DEADLINE + timeout:
                self._kill(child, f"was killed: not registered {now - child.started_at:.0f}s after its start")

    def _kill(self, child: Child, reason: str) -> None:
        """SIGKILL works on a stopped process too; the loop reaps and replaces it."""
        child.kill_reason = reason
        if child.process is not None:
            child.process.kill()

    # --- stopping -----------------------------------------------------------------

    def _stop_children(self) -> None:
        """SIGTERM every child and wait for the drains; a second signal or the
        deadline kills what is left, and the tasks of those are rescued."""
        for child in self.children:
            child.start_at = float("inf")
            if child.running():
                assert child.process is not None
                child.process.send_signal(signal.SIGTERM)
        signals_before = self.signals
        deadline = time.monotonic() + self.config.executor.shutdown_timeout + KILL_GRACE
        while any(child.running() for child in self.children):
            if self.signals > signals_before or time.monotonic() > deadline:
                why = "a second signal" if self.signals > signals_before else "shutdown_timeout + 5 s"
                for child in self.children:
                    if child.running():
                        logger.warning("killing {} (pid {}): {}", child.server_id, child.pid, why)
                        self._kill(child, f"was killed after {why}")
                signals_before = self.signals
            time.sleep(POLL_INTERVAL)
        for child in self.children:
            # killed, or crashed while draining: what it ran is still `running`
            if child.process is not None and child.process.returncode != 0:
                self._rescue(child)


def main(argv: list[str]) -> int:
    """`geventq run` when it runs a supervisor (geventq.cli.runs_supervisor)."""
    from geventq import cli, config
    from geventq.errors import GeventqError

    args = cli.build_parser().parse_args(cli.normalise(argv))
    try:
        cfg = config.load(args.config, cli.overrides_from(args))
        configure_logging(cfg)
        with pidfile.held(cfg.executor.pidfile):
            supervisor = Supervisor(
                config=cfg,
                processes=args.processes or cfg.executor.processes,
                executor_args=executor_args(cfg, args),
                db=SupervisorDatabase(cfg.database),
            )
            return supervisor.run()
    except GeventqError as error:
        print(f"geventq: {error}", file=sys.stderr)
        return cli.USAGE


def executor_args(cfg: Config, args: Any) -> list[str]:
    """What every child is started with: the same file and handlers, one
    process each, and no pid file (the supervisor holds it)."""
    from geventq.cli import overrides_from

    given = ["--config", cfg.path] if cfg.path else []
    for path in overrides_from(args)["handlers.paths"] or []:
        given += ["--handlers", path]
    return [*given, "--processes", "1", "--pidfile="]


def configure_logging(cfg: Config) -> None:
    """stderr, and logs/supervisor-YYYY-MM-DD.log next to the executors' logs."""
    logger.remove()
    logger.add(sys.stderr, format=FORMAT, level=cfg.log.level)
    os.makedirs(cfg.log.dir, exist_ok=True)
    logger.add(
        os.path.join(cfg.log.dir, "supervisor-{time:YYYY-MM-DD}.log"),
        format=FORMAT,
        level=cfg.log.level,
        rotation="00:00",
        retention=f"{cfg.log.retention_days} days",
    )

"""One queue on this server: a scanner greenlet that claims due tasks and a
pool of `max_workers` greenlets that run them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import ujson
from gevent.event import Event
from gevent.pool import Group, Pool
from loguru import logger

from geventq import store
from geventq.attempts import DONE, Attempt, Outcome
from geventq.db import QuotedTable, quote_table
from geventq.errors import DatabaseError, DatabaseUnavailable, LeaseLost, PermanentFailure
from geventq.handlers import JobContext
from geventq.logs import Throttle
from geventq.runtime import Runtime

# A retry's wake-up comes this long after its schedule_time: the outcome's
# write (grouped every few milliseconds) must have landed first.
RETRY_WAKE_MARGIN = 0.05
MIN_IDLE_WAIT = 0.05


class WorkerPool(Pool):
    """A gevent Pool whose size can change while greenlets run in it.

    Growing releases permits at once. Shrinking takes the free permits and
    owes the rest, paid back as running greenlets finish, so no running task
    is cancelled and the new cap holds from the moment it is set."""

    def __init__(self, size: int):
        super().__init__(size)
        self._owed = 0

    def resize(self, size: int) -> None:
        delta, self.size = size - self.size, size
        for _ in range(max(delta, 0)):
            if self._owed:
                self._owed -= 1
            else:
                self._semaphore.release()
        for _ in range(max(-delta, 0)):
            if not self._semaphore.acquire(blocking=False):
                self._owed += 1

    def _discard(self, greenlet) -> None:
        Group._discard(self, greenlet)
        if self._owed:
            self._owed -= 1
        else:
            self._semaphore.release()


def backoff_seconds(retry_count: int, base: float, cap: float) -> float:
    """Delay before retry number retry_count + 1: base * 2^retry_count, capped."""
    return min(base * (2 ** min(retry_count, 32)), cap)


class QueueRunner:
    def __init__(self, runtime: Runtime, row: dict[str, Any],
                 claim: Callable[..., list[dict]]):
        self.runtime = runtime
        self.queue_name: str = row["queue_name"]
        self.table_name: str = row["table_name"]
        self.table: QuotedTable = quote_table(self.table_name, None)
        self.scan_interval: float = float(row["scan_interval"])
        self.task_timeout: float = float(row.get("task_timeout") or 0)
        self.pool = WorkerPool(int(row["max_workers"]))
        self._claim = claim
        self._wake = Event()
        self._stopping = False
        self._scanner: gevent.Greenlet | None = None
        self._claim_errors = Throttle(10)
        # True from sending a claim until its rows are started or given up:
        # reconciliation must not take a slow claim's rows for lost ones.
        self.claim_in_flight = False

    # --- control, from sync and executor ---------------------------------------

    def start(self) -> None:
        self._scanner = gevent.spawn(self._scan_loop)
        logger.info("queue {} started on table {} (max_workers={}, scan_interval={}s)",
                    self.queue_name, self.table_name, self.pool.size, self.scan_interval)

    def apply(self, row: dict[str, Any]) -> None:
        """Take a changed queue_configs row: resize in place, new intervals."""
        if int(row["max_workers"]) != self.pool.size:
            logger.info("queue {}: max_workers {} -> {}", self.queue_name, self.pool.size, row["max_workers"])
            self.pool.resize(int(row["max_workers"]))
        if float(row["scan_interval"]) != self.scan_interval:
            self.scan_interval = float(row["scan_interval"])
            self.wake()
        self.task_timeout = float(row.get("task_timeout") or 0)

    def wake(self) -> None:
        """Claim now instead of at the end of the scan interval."""
        self._wake.set()

    def stop_claiming(self) -> None:
        self._stopping = True
        self._wake.set()

    def drain(self, timeout: float | None) -> bool:
        """Stop claiming and wait for running tasks; True when none is left."""
        self.stop_claiming()
        if self._scanner is not None:
            self._scanner.join()
        return self.pool.join(timeout=timeout)

    def stop_handlers(self, exception: type[BaseException]) -> int:
        running = len(self.pool)
        self.pool.kill(exception=exception, block=True, timeout=5)
        return running

    @property
    def running(self) -> int:
        return len(self.pool)

    # --- scanning ------------------------------------------------------------

    def _scan_loop(self) -> None:
        while not self._stopping:
            if not self.runtime.lease.valid() or not self.runtime.task_types:
                # Clear first: a pending wake would make wait() return at once
                # and this loop spin without yielding, starving the lease watch.
                self._wake.clear()
                self._wake.wait(0.1)
                continue
            if not self.pool.wait_available(timeout=self.scan_interval) or self._stopping:
                continue
            free = self.pool.free_count()
            self._wake.clear()
            claimed = self._claim_batch(free)
            if claimed is None:
                self._wake.wait(min(self.scan_interval, 1.0))
            elif claimed < free:
                self._wake.wait(self._idle_wait())
            elif self.pool.full():
                # Every slot was filled: claim again as soon as slots free up.
                self.pool.wait_available(timeout=self.scan_interval)
                # Yield once, so the other tasks finishing in this loop
                # iteration free their slots too and one claim takes them all.
                gevent.sleep(0)

    def _idle_wait(self) -> float:
        """Nothing more is due: sleep until the next task falls due, at most
        scan_interval (tasks inserted by SQL are found by the next scan)."""
        try:
            wait = self.runtime.db.call(store.seconds_until_next_due, self.table, self.runtime.task_types)
        except DatabaseError:
            return self.scan_interval
        if wait is None:
            return self.scan_interval
        # Due but not claimed means another server holds it right now.
        return min(self.scan_interval, max(wait, MIN_IDLE_WAIT))

    def _claim_batch(self, limit: int) -> int | None:
        """Claim up to `limit` due tasks and start them; None on a database error."""
        lease = self.runtime.lease
        epoch = lease.epoch
        self.claim_in_flight = True
        try:
            try:
                rows = self._claim(self.runtime, self.table, limit)
            except DatabaseError as error:
                self._log_claim_error(error)
                return None
            if rows and not lease.valid_in(epoch):
                # The lease lapsed while the claim was in flight (even if it has
                # been renewed since): another server may have rescued these
                # already, so they must not start here. They stay claimed until
                # that rescue, or our own reconciliation once the lease is back.
                logger.warning("queue {}: lease lapsed during a claim; not starting {} claimed tasks",
                               self.queue_name, len(rows))
                return None
            return self._start_claimed(rows)
        finally:
            self.claim_in_flight = False

    def _start_claimed(self, rows: list[dict]) -> int:
        now = time.monotonic()
        attempts = [Attempt.from_row(self.queue_name, self.table_name, self.table, row, now) for row in rows]
        self.runtime.claimed.add(attempts)
        for attempt in attempts:
            self.pool.spawn(self._run, attempt)
        if attempts:
            self.runtime.listeners.claimed(self.queue_name, attempts)
        return len(attempts)

    def _log_claim_error(self, error: DatabaseError) -> None:
        if self._claim_errors.ready():
            kind = "unavailable" if isinstance(error, DatabaseUnavailable) else "error"
            logger.warning("queue {}: claim failed, database {}: {}", self.queue_name, kind, error)

    # --- running -------------------------------------------------------------

    def _run(self, attempt: Attempt) -> None:
        runtime, log_id = self.runtime, attempt.log_id
        job_logs = runtime.job_logs
        job_logs.begin(log_id, f"start {attempt.task_type} attempt {attempt.retry_count + 1}"
                       f"/{attempt.max_retries + 1} on {runtime.server_id} (queue {self.queue_name})")
        try:
            outcome = self._execute(attempt)
        except LeaseLost:
            job_logs.line(log_id, "WARNING", "stopped: this server's heartbeat lease lapsed; "
                          "another server may run this task again")
            runtime.claimed.drop(attempt)
            raise
        except BaseException:
            # Shutdown killed the handler: the executor hands the task back.
            job_logs.line(log_id, "WARNING", "stopped by shutdown; returned to pending")
            raise
        finally:
            job_logs.end(log_id)
        runtime.recorder.record(attempt, outcome)
        runtime.listeners.finished(attempt, outcome, attempt.seconds_running())

    def _execute(self, attempt: Attempt) -> Outcome:
        """Run the handler; the outcome to record (always writes the last job log line)."""
        log_id, job_logs = attempt.log_id, self.runtime.job_logs
        timeout = gevent.Timeout(self.task_timeout) if self.task_timeout > 0 else None
        try:
            if timeout is not None:
                timeout.start()
            self._call_handler(attempt)
        except gevent.Timeout as fired:
            if fired is not timeout:
                raise
            return self._failure(attempt, f"timed out after {self.task_timeout:g}s", timed_out=True)
        except PermanentFailure as error:
            return self._failure(attempt, f"PermanentFailure: {error}", permanent=True)
        except Exception as error:  # noqa: BLE001 - a handler's failure is data, never fatal
            return self._failure(attempt, f"{type(error).__name__}: {error}")
        finally:
            if timeout is not None:
                timeout.close()
        job_logs.line(log_id, "INFO", f"done in {attempt.seconds_running():.3f}s")
        return DONE

    def _call_handler(self, attempt: Attempt) -> None:
        runtime = self.runtime
        handler = runtime.handlers.get(attempt.task_type)
        if handler is None:
            raise PermanentFailure(f"no handler for task type {attempt.task_type!r} on {runtime.server_id}")
        raw = attempt.task_params
        try:
            params = ujson.loads(raw) if raw else {}
        except ValueError as error:
            raise PermanentFailure(f"task_params is not valid JSON: {error}") from None
        handler(JobContext(
            task_id=attempt.id, task_type=attempt.task_type, params=params, job_param=raw,
            queue_name=self.queue_name, table_name=self.table_name,
            retry_count=attempt.retry_count, max_retries=attempt.max_retries,
            schedule_time=attempt.schedule_time, created_at=attempt.created_at,
            server_id=runtime.server_id, log_id=attempt.log_id,
            log=logger.bind(log_id=attempt.log_id), config=runtime.config, db=runtime.handler_db,
        ))

    def _failure(self, attempt: Attempt, error: str, *, permanent: bool = False,
                 timed_out: bool = False) -> Outcome:
        error = error[:4000]
        cfg = self.runtime.config.queue
        if permanent or attempt.retry_count >= attempt.max_retries:
            outcome = Outcome.failed(error, timed_out=timed_out)
            verdict = "failed for good"
        else:
            delay = backoff_seconds(attempt.retry_count, cfg.retry_backoff_base, cfg.retry_backoff_max)
            outcome = Outcome.retry(error, delay, timed_out=timed_out)
            verdict = f"will retry in {delay:g}s"
            # Look again when the retry falls due, not a whole scan_interval later.
            gevent.spawn_later(delay + RETRY_WAKE_MARGIN, self.wake)
        self.runtime.job_logs.line(attempt.log_id, "ERROR", f"{error} ({verdict})")
        logger.warning("task {} attempt {} {}: {}", attempt.log_id, attempt.retry_count + 1, verdict, error)
        return outcome


# --- claiming, chosen once at start-up by the server's version ----------------

def claim_skip_locked(runtime: Runtime, table: QuotedTable, limit: int) -> list[dict]:
    # claim_db runs without autocommit: SELECT, UPDATE, COMMIT, no BEGIN.
    return runtime.claim_db.call(store.claim_due_tasks_skip_locked, table, runtime.server_id,
                                 runtime.task_types, limit, transaction=True)


def claim_conditional(runtime: Runtime, table: QuotedTable, limit: int) -> list[dict]:
    """For servers without SKIP LOCKED: read candidates, then take each with an
    UPDATE that succeeds only while it is still pending."""
    def claim(cur) -> list[dict]:
        candidates = store.find_due_tasks(cur, table, runtime.task_types, limit)
        now = store.database_now(cur) if candidates else None
        taken = [row for row in candidates
                 if store.claim_one_if_pending(cur, table, runtime.server_id, row["id"])]
        for row in taken:
            row["claimed_at"] = now
        return taken
    return runtime.db.call(claim)


def choose_claim(skip_locked: bool) -> Callable[[Runtime, QuotedTable, int], list[dict]]:
    return claim_skip_locked if skip_locked else claim_conditional

"""One queue on this server: a scanner greenlet that claims due tasks and a
pool of `max_workers` greenlets that run them; and `RunningQueues`, the
queues this server runs now plus those still draining."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group, Pool
from loguru import logger

from geventq import store
from geventq.attempts import Attempt, ClaimedAttempts, Listeners, OutcomeKind
from geventq.claims import Claimer, ClaimResult
from geventq.db import QuotedTable, quote_table
from geventq.errors import DatabaseError, DatabaseUnavailable
from geventq.lease import Lease
from geventq.limits import QueueLimits
from geventq.logs import Throttle
from geventq.running import AttemptRunner

# A retry's wake-up comes this long after its schedule_time: the outcome's
# write (grouped every few milliseconds) must have landed first.
RETRY_WAKE_MARGIN = 0.05
MIN_IDLE_WAIT = 0.05


class WorkerPool(Pool):
    """A gevent Pool whose size can change while greenlets run in it.

    Growing releases permits at once. Shrinking takes the free permits and
    owes the rest, paid back as running greenlets finish, so no running task
    is cancelled and the new cap holds from the moment it is set."""

    size: int

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


class QueueRunner:
    def __init__(
        self,
        row: dict[str, Any],
        *,
        claimer: Claimer,
        lease: Lease,
        claimed: ClaimedAttempts,
        listeners: Listeners,
        attempts: AttemptRunner,
    ):
        self.queue_name: str = row["queue_name"]
        self.table_name: str = row["table_name"]
        self.table: QuotedTable = quote_table(self.table_name, None)
        self.scan_interval: float = float(row["scan_interval"])
        self.task_timeout: float = float(row.get("task_timeout") or 0)
        self.limits = QueueLimits.from_row(row)
        self.pool = WorkerPool(int(row["max_workers"]))
        self._claimer = claimer
        self._lease = lease
        self._claimed = claimed
        self._listeners = listeners
        self._attempts = attempts
        self._wake = Event()
        self._stopping = False
        self._scanner: gevent.Greenlet | None = None
        self._claim_errors = Throttle(10)
        # The table's optional columns (priority: the claim's order;
        # concurrency_key: per-key caps): read before the first claim, then
        # kept, so claims cost no extra query.
        self._features: store.TaskTableFeatures | None = None
        # True from sending a claim until its rows are started or given up:
        # reconciliation must not take a slow claim's rows for lost ones.
        self.claim_in_flight = False
        # Due tasks the last claim left pending because of a limit, by reason.
        self.held_back: dict[str, int] = {}

    # --- control, from sync and executor ---------------------------------------

    def start(self) -> None:
        self._scanner = gevent.spawn(self._scan_loop)
        logger.info(
            "queue {} started on table {} (max_workers={}, scan_interval={}s, limits: {})",
            self.queue_name,
            self.table_name,
            self.pool.size,
            self.scan_interval,
            self.limits.describe(),
        )

    def apply(self, row: dict[str, Any]) -> None:
        """Take a changed queue_configs row: resize in place, new intervals."""
        if int(row["max_workers"]) != self.pool.size:
            logger.info("queue {}: max_workers {} -> {}", self.queue_name, self.pool.size, row["max_workers"])
            self.pool.resize(int(row["max_workers"]))
        if float(row["scan_interval"]) != self.scan_interval:
            self.scan_interval = float(row["scan_interval"])
            self.wake()
        self.task_timeout = float(row.get("task_timeout") or 0)
        limits = QueueLimits.from_row(row)
        if limits != self.limits:
            # Applies from the next claim; running tasks are never stopped by a lower limit.
            logger.info(
                "queue {}: limits {} -> {}", self.queue_name, self.limits.describe(), limits.describe()
            )
            self.limits = limits
            self._warn_if_key_cap_cannot_apply()
            self.wake()

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
    def capped(self) -> bool:
        """A global or per-key cap: running rows, not this pool, decide the room."""
        return bool(self.limits.global_max_workers or self.limits.key_max_workers)

    @property
    def running(self) -> int:
        return len(self.pool)

    # --- scanning ------------------------------------------------------------

    def _scan_loop(self) -> None:
        while not self._stopping:
            if not self._lease.valid() or not self._claimer.task_types:
                # Clear first: a pending wake would make wait() return at once
                # and this loop spin without yielding, starving the lease watch.
                self._wake.clear()
                self._wake.wait(0.1)
                continue
            if not self.pool.wait_available(timeout=self.scan_interval) or self._stopping:
                continue
            self._wake.clear()
            if self.capped and self._claimed.unwritten(self.table_name):
                # Our own ended tasks hold their slots until their outcomes are
                # written (within a hub turn): a claim now would count them and
                # take less. The recorder wakes us once they are written.
                self._wake.wait(self.scan_interval)
                continue
            free = self.pool.free_count()
            result = self._claim_batch(free)
            if result is None:
                self._wake.wait(min(self.scan_interval, 1.0))
            elif result.held:
                # A limit held due tasks back: look again when it may allow
                # more (a local outcome written wakes a capped queue sooner).
                retry_in = result.retry_in if result.retry_in is not None else self.scan_interval
                self._wake.wait(min(self.scan_interval, max(retry_in, MIN_IDLE_WAIT)))
            elif not result.rows and result.retry_in is not None:
                # The claim lost its rows at COMMIT on a cluster: a short, random pause.
                self._wake.wait(result.retry_in)
            elif len(result.rows) < free:
                self._wait_until_due()
            elif self.pool.full():
                # Every slot was filled: claim again as soon as slots free up.
                self.pool.wait_available(timeout=self.scan_interval)
                # Yield once, so the other tasks finishing in this loop
                # iteration free their slots too and one claim takes them all.
                gevent.sleep(0)

    def _wait_until_due(self) -> None:
        """Nothing more is due: sleep until the next task falls due, looking
        again every scan_interval (tasks inserted by SQL are found then).
        Each look is one read of the (status, schedule_time) index, not a
        claim's transaction, so a short scan_interval is cheap on an idle
        queue. Returns when a claim may find work, or when woken."""
        while not self._stopping:
            try:
                wait = self._claimer.seconds_until_next_due(self.table, self.queue_name)
            except DatabaseError:
                self._wake.wait(self.scan_interval)
                return
            if wait is not None and wait <= 0:
                # Due but not claimed means another server holds it right now.
                self._wake.wait(MIN_IDLE_WAIT)
                return
            sleep = self.scan_interval if wait is None else min(self.scan_interval, max(wait, MIN_IDLE_WAIT))
            if self._wake.wait(sleep) or (wait is not None and wait <= sleep):
                return

    def _claim_batch(self, limit: int) -> ClaimResult | None:
        """Claim up to `limit` due tasks and start them; None on a database error."""
        if self._features is None and not self._learn_features():
            return None
        features = self._features
        assert features is not None, "learnt just above"
        epoch = self._lease.epoch
        self.claim_in_flight = True
        try:
            try:
                result = self._claimer.claim(
                    self.table,
                    limit,
                    self.queue_name,
                    self.limits,
                    order=store.claim_order(features),
                    has_key_column=features.concurrency_key,
                )
            except DatabaseError as error:
                self._log_claim_error(error)
                return None
            rows, self.held_back = result.rows, result.held
            if rows and not self._lease.valid_in(epoch):
                # The lease lapsed while the claim was in flight (even if it has
                # been renewed since): another server may have rescued these
                # already, so they must not start here. They stay claimed until
                # that rescue, or our own reconciliation once the lease is back.
                logger.warning(
                    "queue {}: lease lapsed during a claim; not starting {} claimed tasks",
                    self.queue_name,
                    len(rows),
                )
                return None
            self._start_claimed(rows)
            return result
        finally:
            self.claim_in_flight = False

    def _learn_features(self) -> bool:
        """Read the table's optional columns once; False on a database error."""
        try:
            features = self._features = self._claimer.table_features(self.table_name)
        except DatabaseError as error:
            self._log_claim_error(error)
            return False
        if features.priority:
            logger.info(
                "queue {}: claims by priority (table {} has a priority column)",
                self.queue_name,
                self.table_name,
            )
            if features.priority_index is None:
                logger.warning(
                    "queue {}: table {} has a priority column but no (status, priority, schedule_time) "
                    "index: every claim sorts the pending tasks; add one (see README, Priorities)",
                    self.queue_name,
                    self.table_name,
                )
        self._warn_if_key_cap_cannot_apply()
        return True

    def _warn_if_key_cap_cannot_apply(self) -> None:
        if self.limits.key_max_workers and self._features and not self._features.concurrency_key:
            logger.warning(
                "queue {}: key_max_workers is set but {} has no concurrency_key column; "
                "the per-key cap is not applied",
                self.queue_name,
                self.table_name,
            )

    def _start_claimed(self, rows: list[dict]) -> int:
        now = time.monotonic()
        capped = self.capped
        attempts = [
            Attempt.from_row(self.queue_name, self.table_name, self.table, row, now, capped=capped)
            for row in rows
        ]
        self._claimed.add(attempts)
        for attempt in attempts:
            # monitor.py finds the Attempt of a greenlet that blocks the hub in its args.
            self.pool.spawn(self._run, attempt)
        if attempts:
            self._listeners.claimed(self.queue_name, attempts)
        return len(attempts)

    def _log_claim_error(self, error: DatabaseError) -> None:
        if self._claim_errors.ready():
            kind = "unavailable" if isinstance(error, DatabaseUnavailable) else "error"
            logger.warning("queue {}: claim failed, database {}: {}", self.queue_name, kind, error)

    # --- running -------------------------------------------------------------

    def _run(self, attempt: Attempt) -> None:
        # A capped queue's slot frees when the outcome is written, not here:
        # the recorder wakes it then (RunningQueues.outcomes_written).
        outcome = self._attempts.run(attempt, self.task_timeout)
        if outcome.kind is OutcomeKind.RETRY or outcome.kind is OutcomeKind.RATE_LIMITED:
            # Look again when the retry falls due, not a whole scan_interval later.
            gevent.spawn_later(outcome.delay + RETRY_WAKE_MARGIN, self.wake)


class RunningQueues:
    """The queues this server runs now, by queue name, and the retired ones
    still draining their running tasks. The config sync adds and retires;
    the lease watch, reconcile, metrics, the admin and shutdown read."""

    def __init__(self) -> None:
        self.active: dict[str, QueueRunner] = {}
        self._draining: set[QueueRunner] = set()

    def __iter__(self) -> Iterator[QueueRunner]:
        """Every runner, active or draining."""
        return iter([*self.active.values(), *self._draining])

    def names(self) -> list[str]:
        return sorted(self.active)

    def add(self, runner: QueueRunner) -> None:
        self.active[runner.queue_name] = runner
        runner.start()

    def retire(self, queue_name: str) -> None:
        """Stop claiming for a queue that was disabled, deleted or moved away,
        and let its running tasks finish in the background."""
        runner = self.active.pop(queue_name)
        self._draining.add(runner)
        logger.info("queue {} no longer runs here: draining {} running tasks", queue_name, runner.running)
        gevent.spawn(self._drain, runner)

    def _drain(self, runner: QueueRunner) -> None:
        runner.drain(timeout=None)
        self._draining.discard(runner)
        logger.info("queue {} drained", runner.queue_name)

    def outcomes_written(self, queue_names: set[str]) -> None:
        """Outcomes of these capped queues reached the table: they count fewer
        running rows now, so they claim again at once instead of after their
        recheck interval (whether or not their last claim was held: one in
        flight right now may be about to be)."""
        for name in queue_names:
            runner = self.active.get(name)
            if runner is not None:
                runner.wake()

    def for_table(self, table_name: str) -> QueueRunner | None:
        """The active queue this server runs on that table, if any."""
        return next((runner for runner in self.active.values() if runner.table_name == table_name), None)

    def running_count(self) -> int:
        return sum(len(runner.pool) for runner in self)

    def stop_handlers(self, exception: type[BaseException]) -> int:
        """Kill every running handler with `exception`; how many there were."""
        return sum(runner.stop_handlers(exception) for runner in self)

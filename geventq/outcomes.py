"""Writing what happened to each attempt, in groups.

Completions wait up to `queue.completion_flush_interval` (5 ms by default) so
that one UPDATE marks a whole group done. Every write is fenced: it changes a
row only while it is still the attempt this server claimed (status 1, our
server_id, the claimed retry_count), so a server presumed dead never
overwrites a newer attempt.

On a crash, outcomes still waiting in this buffer are lost; their tasks stay
`running` until rescued and then run again: delivery is at-least-once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import gevent
from gevent.event import Event
from loguru import logger

from geventq import store
from geventq.attempts import DONE, Attempt, ClaimedAttempts, Outcome, OutcomeKind
from geventq.db import Database, QuotedTable
from geventq.errors import DatabaseError, DatabaseUnavailable, RetryableConflict
from geventq.logs import Throttle


class OutcomeRecorder:
    def __init__(
        self,
        db: Database,
        server_id: str,
        claimed: ClaimedAttempts,
        flush_interval: float,
        written: Callable[[set[str]], None] = lambda queue_names: None,
    ):
        self.db = db
        self.server_id = server_id
        self.claimed = claimed  # settled here once an outcome is written (or fenced out)
        self.flush_interval = flush_interval
        # Told which capped queues' outcomes were just written: their running
        # rows fell, so they may claim again now (queues.RunningQueues).
        self._written = written
        self._pending: list[tuple[Attempt, Outcome]] = []
        self._has_pending = Event()
        self._write_now = False  # a capped attempt's slot waits on this write
        self._flusher: gevent.Greenlet | None = None
        self._stopping = False
        self._errors = Throttle(10)

    def start(self) -> None:
        self._flusher = gevent.spawn(self._flush_loop)

    def record(self, attempt: Attempt, outcome: Outcome) -> None:
        self._pending.append((attempt, outcome))
        if attempt.capped:
            self._write_now = True
        self._has_pending.set()

    def stop(self, timeout: float) -> bool:
        """Write what is buffered (retrying while the database is away, up to
        `timeout`); True when nothing is left."""
        self._stopping = True
        self._has_pending.set()
        if self._flusher is not None:
            self._flusher.join(timeout=timeout)
            self._flusher.kill()
        return not self._pending

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def _flush_loop(self) -> None:
        backoff = 0.05
        while not (self._stopping and not self._pending):
            self._has_pending.wait()
            if self._write_now:
                gevent.sleep(0)  # the other handlers ending in this turn of the hub join the group
            elif not self._stopping:
                gevent.sleep(self.flush_interval)
            self._write_now = False
            batch, self._pending = self._pending, []
            self._has_pending.clear()
            unwritten = self._write(batch)
            self._tell_written(batch, unwritten)
            if unwritten:
                # Keep them, oldest first, and try again after a pause.
                self._pending[:0] = unwritten
                self._has_pending.set()
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.05

    def _tell_written(self, batch: list[tuple[Attempt, Outcome]], unwritten: list) -> None:
        """Name the capped queues whose outcomes just reached the table."""
        left = {attempt.key for attempt, _ in unwritten}
        names = {attempt.queue_name for attempt, _ in batch if attempt.capped and attempt.key not in left}
        if not names:
            return
        try:
            self._written(names)
        except Exception:  # noqa: BLE001 - a wake must never stop outcome writing
            logger.exception("waking queues after their outcomes were written failed")

    def _write(self, batch: list[tuple[Attempt, Outcome]]) -> list[tuple[Attempt, Outcome]]:
        """Write a batch; returns what could not be written for now."""
        groups, singles = group_outcomes(batch)
        unwritten: list[tuple[Attempt, Outcome]] = []
        for (table, retry_count), attempts in groups.items():
            ids = [attempt.id for attempt in attempts]
            written = self._execute(
                self._write_done, table, attempts[0].table_name, retry_count, ids, transaction=True
            )
            if written is None:
                unwritten.extend((attempt, DONE) for attempt in attempts)
            else:
                self._settle(attempts, DONE, written)
        for attempt, outcome in singles:
            written = self._execute(self._write_failure, attempt, outcome, transaction=True)
            if written is None:
                unwritten.append((attempt, outcome))
            else:
                self._settle([attempt], outcome, written)
        return unwritten

    def _write_done(self, cur, table: QuotedTable, table_name: str, retry_count: int, ids: list[int]) -> int:
        """A group of successes, and their count, in one transaction."""
        written = store.finish_tasks(cur, table, self.server_id, retry_count, ids)
        store.count_outcomes(cur, table_name, self.server_id, {store.DONE: written})
        return written

    def _write_failure(self, cur, attempt: Attempt, outcome: Outcome) -> int:
        """Every outcome but success, and its count if it ended the task."""
        written = self._write_failure_row(cur, attempt, outcome)
        ended = {OutcomeKind.CANCELLED: store.CANCELLED, OutcomeKind.FAILED: store.FAILED}.get(outcome.kind)
        if ended is not None:
            store.count_outcomes(cur, attempt.table_name, self.server_id, {ended: written})
        return written

    def _write_failure_row(self, cur, attempt: Attempt, outcome: Outcome) -> int:
        """Every outcome but success, one attempt at a time, in one transaction."""
        error = outcome.error or ""
        if outcome.kind is OutcomeKind.RETRY:
            return store.retry_task_later(
                cur, attempt.table, self.server_id, attempt.id, attempt.retry_count, error, outcome.delay
            )
        if outcome.kind is OutcomeKind.RATE_LIMITED:
            # The queue's row first, as claims lock it (then task rows): one lock order.
            store.pause_queue(cur, attempt.queue_name, outcome.delay)
            return store.return_rate_limited(
                cur, attempt.table, self.server_id, attempt.id, attempt.retry_count, error, outcome.delay
            )
        if outcome.kind is OutcomeKind.CANCELLED:
            return store.finish_cancelled(
                cur, attempt.table, attempt.table_name, self.server_id, attempt.id, attempt.retry_count, error
            )
        return store.fail_task(cur, attempt.table, self.server_id, attempt.id, attempt.retry_count, error)

    def _execute(self, statement, *args, transaction: bool = False) -> int | None:
        """Rows matched, or None when the database is away (try later)."""
        try:
            return self.db.call(statement, *args, transaction=transaction)
        except (DatabaseUnavailable, RetryableConflict) as error:
            # A conflict that outlasted Database.call's retries (a rescue or
            # a cancel writing the same rows, maybe on another Galera node)
            # is transient too: written later, the fence decides.
            self._log_error(error)
            return None
        except DatabaseError as error:
            # Not transient (the table was dropped, say): retrying cannot help.
            # The rows stay `running` and are reconciled by the heartbeat.
            logger.error("could not record outcomes: {}", error)
            return -1

    def _settle(self, attempts: list[Attempt], outcome: Outcome, written: int) -> None:
        for attempt in attempts:
            self.claimed.settle(attempt)
        if 0 <= written < len(attempts):
            logger.warning(
                "{} of {} {} outcomes on {} were fenced out: those attempts were rescued "
                "or reconciled meanwhile ({})",
                len(attempts) - written,
                len(attempts),
                outcome.kind,
                attempts[0].table_name,
                [attempt.id for attempt in attempts][:20],
            )

    def _log_error(self, error: Exception) -> None:
        if self._errors.ready():
            logger.warning("outcomes waiting for the database ({} buffered): {}", len(self._pending), error)


def group_outcomes(
    batch: list[tuple[Attempt, Outcome]],
) -> tuple[dict[tuple[QuotedTable, int], list[Attempt]], list[tuple[Attempt, Outcome]]]:
    """Successes of one table and retry_count share one fenced UPDATE (the
    fence names one retry_count); failures carry their own error and delay,
    so they go one by one. Order within each is kept."""
    groups: dict[tuple[QuotedTable, int], list[Attempt]] = defaultdict(list)
    singles: list[tuple[Attempt, Outcome]] = []
    for attempt, outcome in batch:
        if outcome.kind is OutcomeKind.DONE:
            groups[(attempt.table, attempt.retry_count)].append(attempt)
        else:
            singles.append((attempt, outcome))
    return dict(groups), singles

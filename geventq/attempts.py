"""Attempts: what one claim of one task is, the one owner of "claimed, outcome
not written yet", and the listeners that observe the life cycle.

An attempt is frozen data, built from the claimed row: it names its queue and
table but holds no runner and no runtime, so anything may keep one without
keeping the machinery alive. `ClaimedAttempts` is the only place that knows
which attempts this server holds; the scanner adds, the outcome recorder
settles, the lease watch drops, reconciliation and shutdown ask.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, Protocol

from gevent import Greenlet
from loguru import logger

from geventq.db import QuotedTable


class Status(IntEnum):
    """A task row's `status`: the values the seed's tables define."""

    PENDING = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3
    CANCELLED = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class Attempt(NamedTuple):
    """One claimed attempt of one task. A NamedTuple: immutable, and cheap to
    build at thousands a second on the hub."""

    queue_name: str
    table_name: str
    table: QuotedTable
    id: int
    task_type: str
    task_params: str | None
    retry_count: int
    max_retries: int
    schedule_time: datetime | None
    created_at: datetime | None
    claimed_at: datetime | None  # the database clock, at the claim
    started: float  # this process's monotonic clock, when it was handed to the pool
    # Claimed under a global or per-key cap: its running row holds a slot
    # until the outcome is written, so the outcome is written without waiting
    # to be grouped with others.
    capped: bool = False

    @classmethod
    def from_row(
        cls,
        queue_name: str,
        table_name: str,
        table: QuotedTable,
        row: dict[str, Any],
        started: float,
        *,
        capped: bool = False,
    ) -> Attempt:
        return cls(
            queue_name,
            table_name,
            table,
            row["id"],
            row["task_type"],
            row["task_params"],
            row["retry_count"],
            row["max_retries"],
            row["schedule_time"],
            row.get("created_at"),
            row.get("claimed_at"),
            started,
            capped,
        )

    @property
    def key(self) -> tuple[str, int]:
        return (self.table_name, self.id)

    @property
    def log_id(self) -> str:
        return f"{self.table_name}-{self.id}"

    def seconds_running(self) -> float:
        return time.monotonic() - self.started


class OutcomeKind(StrEnum):
    DONE = "done"
    RETRY = "retry"  # failed, pending again after a backoff
    FAILED = "failed"  # failed for good
    RATE_LIMITED = "rate_limited"  # pending again after `delay`, attempt not spent; the queue pauses
    CANCELLED = "cancelled"  # stopped by a cancel request: status 4, never retried


class Outcome(NamedTuple):
    """How one attempt ended, as the outcome recorder writes it."""

    kind: OutcomeKind
    error: str | None = None
    delay: float = 0.0
    timed_out: bool = False

    @classmethod
    def retry(cls, error: str, delay: float, *, timed_out: bool = False) -> Outcome:
        return cls(OutcomeKind.RETRY, error, delay, timed_out)

    @classmethod
    def failed(cls, error: str, *, timed_out: bool = False) -> Outcome:
        return cls(OutcomeKind.FAILED, error, 0.0, timed_out)

    @classmethod
    def rate_limited(cls, error: str, delay: float) -> Outcome:
        return cls(OutcomeKind.RATE_LIMITED, error, delay)

    @classmethod
    def cancelled(cls, error: str) -> Outcome:
        return cls(OutcomeKind.CANCELLED, error)


DONE = Outcome(OutcomeKind.DONE)


class CancelFlag:
    """Raised once when the attempt's cancel is requested and never lowered:
    a run_in_thread loop that checks ctx.cancel_requested() after its greenlet
    was stopped (and the outcome written) must still see it. A plain bool
    attribute, so a native thread can read it without touching the hub."""

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


class ClaimedAttempts:
    """The attempts this server claimed whose outcome is not written yet."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], Attempt] = {}
        # The greenlets whose handler is running now, by attempt key: what a
        # cancel request stops.
        self._handlers: dict[tuple[str, int], tuple[Greenlet, CancelFlag]] = {}
        self._cancel_requested: set[tuple[str, int]] = set()
        self._ended: set[tuple[str, int]] = set()  # handler returned, outcome not written yet
        self._ended_by_table: Counter[str] = Counter()

    def add(self, attempts: Iterable[Attempt]) -> None:
        for attempt in attempts:
            self._held[attempt.key] = attempt

    def settle(self, attempt: Attempt) -> None:
        """Its outcome was written (or fenced out): it is no longer ours."""
        self._forget(attempt)

    def drop(self, attempt: Attempt) -> None:
        """The lease lapsed under it: another server may rescue it, nothing here writes it."""
        self._forget(attempt)

    def _forget(self, attempt: Attempt) -> None:
        key = attempt.key
        if self._held.get(key) == attempt:  # not a newer attempt of the same task
            del self._held[key]
            if key in self._ended:
                self._ended.discard(key)
                self._ended_by_table[key[0]] -= 1
            self._handlers.pop(key, None)
            self._cancel_requested.discard(key)

    def unwritten(self, table_name: str) -> int:
        """Attempts of the table whose handler returned and whose outcome is
        not written yet: their rows still count as running."""
        return self._ended_by_table[table_name]

    def holds(self, table_name: str, task_id: int) -> bool:
        return (table_name, task_id) in self._held

    # --- running handlers, and cancelling them ---------------------------------

    def handler_started(self, attempt: Attempt, greenlet: Greenlet) -> CancelFlag:
        """The handler runs on `greenlet`; the flag it gets is what
        ctx.cancel_requested() reads."""
        flag = CancelFlag()
        self._handlers[attempt.key] = (greenlet, flag)
        return flag

    def handler_ended(self, attempt: Attempt) -> None:
        """From here on the attempt's outcome stands: a cancel no longer stops it."""
        self._handlers.pop(attempt.key, None)
        self._cancel_requested.discard(attempt.key)
        if attempt.key in self._held and attempt.key not in self._ended:
            self._ended.add(attempt.key)
            self._ended_by_table[attempt.table_name] += 1

    def cancel(self, table_name: str, task_id: int, retry_count: int, exception: type[BaseException]) -> str:
        """Stop the handler of that attempt with `exception`, at its next
        cooperative switch. Returns what happened: "stopping" (the handler
        runs and will stop), "already_stopping" (asked before),
        "not_started" (held, the handler has not begun: ask again),
        "finished" (its outcome stands), or "not_held"."""
        key = (table_name, task_id)
        attempt = self._held.get(key)
        if attempt is None or attempt.retry_count != retry_count:
            return "not_held"
        running = self._handlers.get(key)
        if running is None:
            return "finished" if key in self._ended else "not_started"
        if key in self._cancel_requested:
            return "already_stopping"
        greenlet, flag = running
        self._cancel_requested.add(key)
        flag.requested = True
        greenlet.kill(exception, block=False)
        return "stopping"

    def unfinished(self) -> list[Attempt]:
        """What shutdown hands back: claimed here, no outcome written."""
        return list(self._held.values())

    def __len__(self) -> int:
        return len(self._held)


class LifecycleListener(Protocol):
    """What observers (metrics now; schedules and limits later) are told.
    Each call runs on the hub, on the hot path: keep it O(1) and cheap."""

    def claimed(self, queue_name: str, attempts: Sequence[Attempt]) -> None: ...

    def finished(self, attempt: Attempt, outcome: Outcome, seconds: float) -> None: ...

    def rescued(self, table_name: str, count: int) -> None: ...


class Listeners:
    """Fans each event out to every listener. A listener that raises is
    logged and skipped: observing a claim or an outcome never breaks it."""

    def __init__(self, listeners: Iterable[LifecycleListener] = ()):
        self._listeners = list(listeners)

    def add(self, listener: LifecycleListener) -> None:
        self._listeners.append(listener)

    def claimed(self, queue_name: str, attempts: Sequence[Attempt]) -> None:
        for listener in self._listeners:
            try:
                listener.claimed(queue_name, attempts)
            except Exception:  # noqa: BLE001 - an observer must not break the claim
                logger.exception("listener {} failed on a claim", type(listener).__name__)

    def finished(self, attempt: Attempt, outcome: Outcome, seconds: float) -> None:
        for listener in self._listeners:
            try:
                listener.finished(attempt, outcome, seconds)
            except Exception:  # noqa: BLE001 - an observer must not break the outcome
                logger.exception("listener {} failed on an outcome", type(listener).__name__)

    def rescued(self, table_name: str, count: int) -> None:
        for listener in self._listeners:
            try:
                listener.rescued(table_name, count)
            except Exception:  # noqa: BLE001 - an observer must not break the rescue
                logger.exception("listener {} failed on a rescue", type(listener).__name__)

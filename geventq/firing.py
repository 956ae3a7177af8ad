"""Firing due schedules: one greenlet per executor, no leader.

Every server with `queue.enable` runs a `ScheduleFirer`. It sleeps until the
earliest `next_fire_at` (at most a second, so an edit made on another server,
or by SQL, applies within one; an edit through this server's admin wakes it at
once), then fires each due schedule in a short transaction of its own:

1. lock the due schedule row: `SELECT … FOR UPDATE SKIP LOCKED` (another
   server firing it is skipped), or on servers without SKIP LOCKED a
   compare-and-set UPDATE on its next_fire_at;
2. plan the step with the misfire policy (geventq.misfire);
3. per fire: a ledger row in `schedule_fires` (PRIMARY KEY (schedule_id,
   fire_at): a fire already recorded is never fired again, whatever
   next_fire_at says) and the task in the target queue's table;
4. move next_fire_at on; COMMIT.

Everything is in the database, so a server that dies mid-fire leaves nothing
half done (the transaction rolls back) and any server redoes the fire. A
server fires only while its heartbeat lease is valid, as it claims. No named
locks (GET_LOCK does not replicate on Galera): row locks and the ledger's key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import gevent
import ujson
from gevent.event import Event
from loguru import logger

from geventq import schedule_store
from geventq.attempts import Status
from geventq.cadence import Cadence
from geventq.db import Database, quote_table
from geventq.errors import (
    DatabaseError,
    DuplicateKey,
    InvalidIdentifier,
    InvalidSchedule,
    RetryableConflict,
    TableProblem,
)
from geventq.handlers import SCHEDULE_KEY
from geventq.lease import Lease
from geventq.logs import Throttle
from geventq.misfire import FireOutcome, FirePlan, Overlap, plan_fires

MAX_SLEEP = 1.0  # re-read at least this often: edits elsewhere apply within a second
STEPS_PER_PASS = 200  # then yield to the rest of the hub, and look again
# A schedule this server cannot fire now is set aside for a while (here
# only; other servers decide for themselves), so it cannot spin the loop or
# hold up the schedules behind it.
PARK_MISSING_QUEUE = 5.0
PARK_INVALID = 30.0
LOG_EVERY = 60.0
ACTIVE = (int(Status.PENDING), int(Status.RUNNING))


def fire_time_text(fire_at: datetime) -> str:
    """`YYYY-MM-DD HH:MM:SS.mmm`, the form of `_schedule.fire_at` and the API's times."""
    return fire_at.strftime("%Y-%m-%d %H:%M:%S.") + f"{fire_at.microsecond // 1000:03d}"


def scheduled_params(stored: str | None, name: str, fire_at: datetime) -> str:
    """The task's task_params: the schedule's object plus `_schedule`."""
    params: Any = {}
    if stored:
        try:
            params = ujson.loads(stored)
        except ValueError as error:
            raise InvalidSchedule("task_params", f"is not valid JSON: {error}") from None
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidSchedule("task_params", "must be a JSON object or NULL")
    params[SCHEDULE_KEY] = {"name": name, "fire_at": fire_time_text(fire_at)}
    return ujson.dumps(params, ensure_ascii=False, escape_forward_slashes=False)


def cadence_of(row: dict[str, Any]) -> Cadence:
    return Cadence.of(row["cron"], row["interval_seconds"], row["timezone"])


class FireListener(Protocol):
    """Observers of fires (metrics). Called on the hub after the commit."""

    def schedule_fired(self, name: str, outcome: FireOutcome, count: int) -> None: ...


@dataclass
class Step:
    """What one fire transaction did, reported after it committed."""

    name: str
    table_name: str
    outcomes: dict[FireOutcome, int] = field(default_factory=dict)

    def count(self, outcome: FireOutcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


class ParkSchedule(Exception):
    """This server cannot fire this schedule now: set it aside for `seconds`."""

    def __init__(self, schedule_id: int, seconds: float, reason: str):
        super().__init__(reason)
        self.schedule_id = schedule_id
        self.seconds = seconds
        self.reason = reason


def enqueue_fire(cur, row: dict[str, Any], table_name: str, fire_at: datetime) -> int:
    """The task of one fire and its ledger row, in the caller's transaction;
    the task's id. Also what a manual run (admin `schedule/run`) does."""
    params = scheduled_params(row["task_params"], row["name"], fire_at)
    table = quote_table(table_name, None)
    task_id = schedule_store.insert_scheduled_task(cur, table, row["task_type"], params, row["max_retries"])
    schedule_store.record_fire(cur, row["id"], fire_at, table_name, task_id, FireOutcome.ENQUEUED)
    return task_id


def target_table(cur, row: dict[str, Any]) -> str:
    """The table the schedule's tasks go to: its queue's, or while the queue
    is missing the table of its latest fire (a deleted queue's table stays,
    and the tasks wait there). Raises ParkSchedule when there is neither."""
    table_name = schedule_store.queue_table(cur, row["queue_name"]) or schedule_store.last_fire_table(
        cur, row["id"]
    )
    if table_name is None:
        raise ParkSchedule(row["id"], PARK_MISSING_QUEUE, f"queue {row['queue_name']!r} does not exist")
    try:
        quote_table(table_name, None)
    except InvalidIdentifier as error:
        raise ParkSchedule(row["id"], PARK_INVALID, str(error)) from None
    return table_name


class ScheduleFirer:
    def __init__(
        self,
        *,
        db: Database,
        fire_db: Database,
        lease: Lease,
        skip_locked: bool,
        tasks_added: Callable[[str], None],
        listener: FireListener | None = None,
    ):
        self.db = db  # autocommit: the one-statement reads
        self.fire_db = fire_db  # autocommit off: each fire is one transaction
        self.lease = lease
        self.skip_locked = skip_locked
        self.tasks_added = tasks_added  # wakes the queue's scanners, here and on peers
        self.listener = listener
        self._parked: dict[int, float] = {}  # schedule id -> monotonic time it may be tried again
        self._wake = Event()
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None
        self._errors = Throttle(10.0)
        self._park_log: dict[tuple[int, str], float] = {}

    # --- life cycle --------------------------------------------------------------

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._loop)

    def wake(self) -> None:
        """A schedule changed here: look again now, not at the end of the sleep."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the fire in progress (if any), then stop."""
        self._stopping = True
        self._wake.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            self._greenlet.kill(block=True, timeout=1)

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = self.run_once()
            except DatabaseError as error:
                if self._errors.ready():
                    logger.warning(
                        "schedules: database {} unavailable ({}); retrying", self.db.address, error
                    )
                wait = MAX_SLEEP
            except Exception:  # noqa: BLE001 - log, and fire again on the next pass
                logger.exception("schedules: firing failed")
                wait = MAX_SLEEP
            if not self._stopping:
                self._wake.wait(wait)

    # --- one pass ------------------------------------------------------------------

    def run_once(self) -> float:
        """Fire what is due; how long to sleep before looking again."""
        if not self.lease.valid():
            return 0.25
        parked = self._parked_ids()
        wait, unstarted = self.db.call(schedule_store.peek, parked)
        if unstarted:
            self._start_unstarted(parked)
            wait, _ = self.db.call(schedule_store.peek, parked)  # their first fire may be a moment away
        if wait is not None and wait <= 0:
            self._fire_due()
            wait, _ = self.db.call(schedule_store.peek, self._parked_ids())
        return MAX_SLEEP if wait is None else min(MAX_SLEEP, max(0.0, wait))

    def _fire_due(self) -> None:
        for _ in range(STEPS_PER_PASS):
            if self._stopping or not self.lease.valid():
                return
            step = self._fire_step()
            if step is None:
                return
            self._report(step)
            gevent.sleep(0)

    def _fire_step(self) -> Step | None:
        """One due schedule in one transaction; None when nothing is due."""
        try:
            return self.fire_db.call(self._step, self._parked_ids(), transaction=True)
        except ParkSchedule as park:
            self._park(park)
            return Step("", "")
        except (DuplicateKey, RetryableConflict) as error:
            # Someone recorded this fire between our read of the ledger and
            # our insert (compare-and-set mode), or committed it first on
            # another Galera node (a certification failure, after
            # Database.call's retries): the fire happened; look again.
            logger.debug("schedules: a fire was recorded elsewhere first ({})", error)
            return Step("", "")

    def _step(self, cur, parked: list[int]) -> Step | None:
        row = self._lock_due(cur, parked)
        if row is None:
            return None
        try:
            cadence = cadence_of(row)
            plan = plan_fires(
                cadence,
                row["next_fire_at"],
                row["now"],
                policy=row["misfire_policy"],
                grace_seconds=row["misfire_grace_seconds"],
                max_catchup=row["max_catchup"],
            )
        except (InvalidSchedule, ValueError) as error:  # ValueError: a policy no enum knows
            raise ParkSchedule(row["id"], PARK_INVALID, f"cannot fire: {error}") from None
        table_name = target_table(cur, row)
        try:
            return self._write_plan(cur, row, plan, table_name)
        except InvalidSchedule as error:
            raise ParkSchedule(row["id"], PARK_INVALID, f"cannot fire: {error}") from None
        except TableProblem as error:
            raise ParkSchedule(row["id"], PARK_MISSING_QUEUE, f"table {table_name}: {error}") from None

    def _lock_due(self, cur, parked: list[int]) -> dict[str, Any] | None:
        if self.skip_locked:
            return schedule_store.lock_due_schedule(cur, parked)
        row = schedule_store.find_due_schedule(cur, parked)
        if row is None or not schedule_store.lock_if_unchanged(cur, row["id"], row["next_fire_at"]):
            return None if row is None else self._lock_due(cur, [*parked, row["id"]])
        return row

    def _write_plan(self, cur, row: dict[str, Any], plan: FirePlan, table_name: str) -> Step:
        step = Step(row["name"], table_name)
        done = schedule_store.recorded_fires(cur, row["id"], plan.fire_times)
        last_fire, last_task = row["last_fire_at"], row["last_task_id"]
        for fire_at in plan.enqueue:
            if fire_at in done:
                continue
            if row["overlap"] == Overlap.SKIP and self._previous_still_active(cur, row["id"]):
                schedule_store.record_fire(
                    cur, row["id"], fire_at, table_name, None, FireOutcome.SKIPPED_OVERLAP
                )
                step.count(FireOutcome.SKIPPED_OVERLAP)
                continue
            last_fire, last_task = fire_at, enqueue_fire(cur, row, table_name, fire_at)
            step.count(FireOutcome.ENQUEUED)
        if plan.missed is not None and plan.missed not in done:
            schedule_store.record_fire(cur, row["id"], plan.missed, table_name, None, FireOutcome.MISSED)
            step.count(FireOutcome.MISSED)
        schedule_store.advance_schedule(cur, row["id"], plan.next_fire_at, last_fire, last_task)
        return step

    @staticmethod
    def _previous_still_active(cur, schedule_id: int) -> bool:
        previous = schedule_store.previous_task(cur, schedule_id)
        return previous is not None and schedule_store.task_status(cur, *previous) in ACTIVE

    def _start_unstarted(self, parked: list[int]) -> None:
        """Schedules added by SQL without a next_fire_at start at the first fire after now."""
        for row in self.db.call(schedule_store.unstarted_schedules, parked):
            try:
                first = cadence_of(row).next_after(row["now"])
            except InvalidSchedule as error:
                self._park(ParkSchedule(row["id"], PARK_INVALID, f"cannot start: {error}"))
                continue
            if self.db.call(schedule_store.start_schedule, row["id"], first):
                logger.info("schedule {} starts: first fire at {} UTC", row["name"], fire_time_text(first))

    # --- after a commit --------------------------------------------------------------

    def _report(self, step: Step) -> None:
        if not step.outcomes:
            return
        if step.outcomes.get(FireOutcome.ENQUEUED):
            self.tasks_added(step.table_name)
        for outcome, count in step.outcomes.items():
            if outcome is not FireOutcome.ENQUEUED:
                logger.info("schedule {}: {} fire(s) {}", step.name, count, outcome.value)
            if self.listener is not None:
                try:
                    self.listener.schedule_fired(step.name, outcome, count)
                except Exception:  # noqa: BLE001 - an observer must not break firing
                    logger.exception("listener {} failed on a fire", type(self.listener).__name__)

    # --- schedules set aside -------------------------------------------------------------

    def _park(self, park: ParkSchedule) -> None:
        now = time.monotonic()
        self._parked[park.schedule_id] = now + park.seconds
        key = (park.schedule_id, park.reason)
        if now >= self._park_log.get(key, 0.0):
            self._park_log[key] = now + LOG_EVERY
            logger.warning(
                "schedule id {}: {}; trying again in {:g}s", park.schedule_id, park.reason, park.seconds
            )

    def _parked_ids(self) -> list[int]:
        now = time.monotonic()
        for schedule_id in [key for key, until in self._parked.items() if until <= now]:
            del self._parked[schedule_id]
        return list(self._parked)

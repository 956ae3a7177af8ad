"""What a schedule that fell due does now: which fire times get a task, which
one is recorded as missed, and when it fires next. Pure: the caller passes
the database clock's `now`.

A fire is *late* when now − fire_at > misfire_grace_seconds. A fire that is
on time gets its task, and the next fire follows the cadence from its fire
time (not from now), so a server that wakes a little late keeps the rhythm;
several on-time fires that fell due together are taken one per step, each in
its own transaction. When the due fire is late, the whole run of late fires
(every fire older than now − grace) is settled in one step by the policy:

- `skip`: no task; the latest late fire is recorded `missed`;
- `once`: one task, for the latest late fire;
- `all`: a task for every late fire, oldest first, at most `max_catchup`;
  when more were late, the latest of those left out is recorded `missed`.

After that the next fire is the first after the late run: either an on-time
fire that is already due (taken by the next step) or the first after now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from geventq.cadence import Cadence


class MisfirePolicy(StrEnum):
    SKIP = "skip"
    ONCE = "once"
    ALL = "all"


class Overlap(StrEnum):
    ALLOW = "allow"
    SKIP = "skip"


class FireOutcome(StrEnum):
    """A ledger row's `outcome`."""

    ENQUEUED = "enqueued"
    SKIPPED_OVERLAP = "skipped_overlap"
    MISSED = "missed"


@dataclass(frozen=True)
class FirePlan:
    enqueue: tuple[datetime, ...]  # fire times that get a task, oldest first
    missed: datetime | None  # the fire time recorded as missed, if any
    next_fire_at: datetime
    late: bool  # the due fire was late: the policy decided

    @property
    def fire_times(self) -> tuple[datetime, ...]:
        """Every fire time this step writes to the ledger."""
        return self.enqueue + ((self.missed,) if self.missed is not None else ())


def plan_fires(
    cadence: Cadence,
    due_at: datetime,
    now: datetime,
    *,
    policy: MisfirePolicy | str,
    grace_seconds: float,
    max_catchup: int,
) -> FirePlan:
    """The step for a schedule whose `next_fire_at` (`due_at`) is <= `now`."""
    policy = MisfirePolicy(policy)
    boundary = now - timedelta(seconds=grace_seconds)  # fires before this are late
    if due_at >= boundary:
        return FirePlan((due_at,), None, cadence.next_after(due_at), late=False)
    latest_late = cadence.last_before(boundary, due_at) or due_at
    after_late_run = cadence.next_after(latest_late)
    if policy is MisfirePolicy.SKIP:
        return FirePlan((), latest_late, after_late_run, late=True)
    if policy is MisfirePolicy.ONCE:
        return FirePlan((latest_late,), None, after_late_run, late=True)
    caught_up = cadence.fires_from(due_at, boundary, max(0, max_catchup))
    missed = latest_late if not caught_up or caught_up[-1] != latest_late else None
    return FirePlan(tuple(caught_up), missed, after_late_run, late=True)


def initial_fire(cadence: Cadence, now: datetime) -> datetime:
    """Where a schedule starts, or starts again after an edit, a pause or a
    resume: the first fire after now. Nothing fires retroactively."""
    return cadence.next_after(now)

"""Limits across the cluster, as one queue's claims apply them.

`global_max_workers` caps the queue's running rows on all servers together,
`rate_limit` caps task starts in any `rate_period` seconds, and
`key_max_workers` caps running rows per `concurrency_key`. Each is 0 = off.
The claim of a limited queue runs under the lock of the queue's row in
`queue_state` (claims.py, SQL in store.py); what is decided there, given the
counts read under that lock, is here: pure functions, unit-tested.

Rate limiting counts starts in slices of rate_period / RATE_SLICES seconds.
A slice that reaches into the window counts whole, so the count can only be
too high, never too low: at most rate_limit starts in any window of
rate_period seconds, and a steady queue reaches about 59/60 of the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

RATE_SLICES = 60
# The most candidates one claim reads while stepping over capped keys.
KEY_SCAN_LIMIT = 2000

HELD_REASONS = ("global", "rate", "key", "paused")


@dataclass(frozen=True)
class QueueLimits:
    global_max_workers: int = 0
    rate_limit: int = 0
    rate_period: float = 60.0
    key_max_workers: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> QueueLimits:
        return cls(
            int(row.get("global_max_workers") or 0),
            int(row.get("rate_limit") or 0),
            float(row.get("rate_period") or 60),
            int(row.get("key_max_workers") or 0),
        )

    @property
    def any(self) -> bool:
        """A limit is on: the queue claims under its lock instead of the plain claim."""
        return bool(self.global_max_workers or self.rate_limit or self.key_max_workers)

    @property
    def slice_seconds(self) -> float:
        return self.rate_period / RATE_SLICES

    def describe(self) -> str:
        parts = []
        if self.global_max_workers:
            parts.append(f"global_max_workers={self.global_max_workers}")
        if self.rate_limit:
            parts.append(f"rate_limit={self.rate_limit}/{self.rate_period:g}s")
        if self.key_max_workers:
            parts.append(f"key_max_workers={self.key_max_workers}")
        return ", ".join(parts) or "none"


NO_LIMITS = QueueLimits()


def global_room(limits: QueueLimits, running: int) -> int:
    return max(0, limits.global_max_workers - running)


def window_start(utc_now: datetime, limits: QueueLimits) -> datetime:
    """Slices ending after this instant count against the rate."""
    return utc_now - timedelta(seconds=limits.rate_period)


def rate_room(limits: QueueLimits, used: int) -> int:
    return max(0, limits.rate_limit - used)


def current_slice(utc_now: datetime, limits: QueueLimits) -> tuple[datetime, datetime]:
    """The slice `utc_now` falls in: slices are aligned to the epoch, so every
    server puts a start in the same slice."""
    width = limits.slice_seconds
    index = int(_epoch(utc_now) // width)
    start = _from_epoch(index * width)
    return start, _from_epoch((index + 1) * width)


def seconds_until_rate_room(first_end: datetime | None, utc_now: datetime, limits: QueueLimits) -> float:
    """When the earliest counted slice leaves the window and room may open."""
    if first_end is None:
        return limits.slice_seconds
    return max(0.0, (first_end + timedelta(seconds=limits.rate_period) - utc_now).total_seconds())


def pick_by_key(
    candidates: Iterable[dict[str, Any]], running: dict[str, int], cap: int, wanted: int
) -> tuple[list[dict[str, Any]], int]:
    """Candidates in claim order that fit under the per-key cap, up to
    `wanted`, and how many were stepped over because their key was full.
    `running` is updated with what is taken. NULL keys are not limited."""
    taken: list[dict[str, Any]] = []
    skipped = 0
    for row in candidates:
        if len(taken) == wanted:
            break
        key = row.get("concurrency_key")
        if key is not None and running.get(key, 0) >= cap:
            skipped += 1
            continue
        if key is not None:
            running[key] = running.get(key, 0) + 1
        taken.append(row)
    return taken, skipped


_EPOCH = datetime(1970, 1, 1)


def _epoch(naive_utc: datetime) -> float:
    return (naive_utc - _EPOCH).total_seconds()


def _from_epoch(seconds: float) -> datetime:
    # Milliseconds, like DATETIME(3): the slice bounds are stored as they are computed.
    return _EPOCH + timedelta(milliseconds=round(seconds * 1000))

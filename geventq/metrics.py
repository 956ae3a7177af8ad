"""Prometheus metrics of one executor process, served at GET /metrics.

Every process has a registry of its own (never prometheus-client's global
one), holding three collectors:

- `HotPathCollector`: counters and histograms fed by the runners' hooks
  (`claimed`, `finished`) and the rescue (`rescued`), and the gauges that
  are read off the running queues, the recorder and the lease;
- `DatabaseCollector`: the gauges read from the database at scrape time
  (due pending tasks and the age of the oldest), one query per queue table,
  within a time budget; a database error leaves them out, never the rest;
- prometheus-client's own process and platform collectors.

Why the hot-path numbers are plain attributes and not prometheus-client
Counter and Histogram children: those guard every value with a
`threading.Lock`, which gevent's monkey-patching turns into a greenlet lock;
measured under patching, `Counter.inc` costs 0.8 µs and `Histogram.observe`
2.2 µs, so two hooks per task would cost ~6 µs at ~7,000 tasks/s. Every hook
and every scrape runs on the hub's one thread, where an `int += 1` between
two greenlet switches needs no lock, so the hooks add to `QueueStats` slots
(see README "Operator's view" for the measured cost) and the collectors turn
them into prometheus-client metric families when scraped.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import bottle
import gevent
from loguru import logger
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from geventq import admin_store, store
from geventq.admin import require_bearer
from geventq.api_schema import Endpoint
from geventq.attempts import Attempt, Outcome, OutcomeKind
from geventq.catalog import QueueCatalog
from geventq.db import Database
from geventq.errors import DatabaseError
from geventq.lease import Lease
from geventq.limits import HELD_REASONS
from geventq.logs import Throttle
from geventq.queues import QueueRunner, RunningQueues

# Seconds from a handler's start to its end.
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Seconds from schedule_time (when a task became due) to its claim.
PICKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# The most a scrape waits for the database; Prometheus' default scrape timeout is 10 s.
SCRAPE_DB_BUDGET = 3.0
# Scrapes closer together than this reuse the last database read.
SCRAPE_DB_REUSE = 1.0

QUEUE_SERVER = ("queue", "server")

# (metric name without _total, QueueStats slot, help)
COUNTERS = (
    ("geventq_tasks_claimed", "claimed", "Tasks this server claimed from the queue's table"),
    ("geventq_tasks_succeeded", "succeeded", "Attempts whose handler returned (status 2 done)"),
    (
        "geventq_tasks_failed",
        "failed",
        "Attempts that failed for good: retries exhausted or PermanentFailure (status 3)",
    ),
    ("geventq_tasks_retried", "retried", "Failed attempts scheduled to run again (back to status 0)"),
    (
        "geventq_tasks_rescued",
        "rescued",
        "Tasks this server returned to pending (or failed) because their server's heartbeat expired",
    ),
    (
        "geventq_tasks_rate_limited",
        "rate_limited",
        "Attempts whose handler raised RateLimited (back to pending, not counted; the queue paused)",
    ),
    ("geventq_tasks_cancelled", "cancelled", "Running attempts stopped by a cancel request (status 4)"),
    (
        "geventq_tasks_timed_out",
        "timed_out",
        "Attempts stopped by the queue's task_timeout (also counted as retried or failed)",
    ),
)

# Per schedule: the fires this server wrote to the ledger, by outcome.
SCHEDULE_COUNTERS = (
    ("geventq_schedule_fires", "enqueued", "Schedule fires this server turned into a task"),
    (
        "geventq_schedule_misses",
        "missed",
        "Late fires (misfire policy skip, or all past max_catchup) this server recorded as missed",
    ),
    (
        "geventq_schedule_overlap_skips",
        "skipped_overlap",
        "Fires this server skipped because the previous task was still pending or running (overlap: skip)",
    ),
)


class Buckets:
    """One histogram's observations: per-bucket counts (not cumulative) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus' `le`.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        labels = [*(repr(float(bound)) for bound in self.bounds), "+Inf"]
        running, buckets = 0, []
        for label, count in zip(labels, self.counts, strict=True):
            running += count
            buckets.append((label, running))
        return buckets


class QueueStats:
    """What this process counted for one queue since it started."""

    __slots__ = (
        "cancelled",
        "claimed",
        "failed",
        "pickup",
        "rate_limited",
        "rescued",
        "retried",
        "run",
        "succeeded",
        "timed_out",
    )

    def __init__(self) -> None:
        self.claimed = self.succeeded = self.failed = self.retried = self.rescued = self.timed_out = 0
        self.rate_limited = self.cancelled = 0
        self.run = Buckets(RUN_BUCKETS)
        self.pickup = Buckets(PICKUP_BUCKETS)


class Metrics:
    """The process's registry, its hot-path hooks and the /metrics route."""

    def __init__(
        self,
        *,
        server_id: str,
        db: Database,
        catalog: QueueCatalog,
        running: RunningQueues,
        lease: Lease,
        outcome_backlog: Callable[[], int],
        token: str,
    ):
        self.server_id = server_id
        self.db = db
        self.catalog = catalog
        self.running = running
        self.lease = lease
        self.outcome_backlog = outcome_backlog
        self.token = token  # the bearer token /metrics needs; "" = none
        self.queues: dict[str, QueueStats] = {}  # by queue name: counters survive a runner's restart
        # by schedule name, then a ledger outcome (enqueued, missed, skipped_overlap): fires written here
        self.schedule_fires: dict[str, dict[str, int]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HotPathCollector(self))
        self.registry.register(DatabaseCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    # --- the life cycle's listener (the hub runs ~7,000 tasks/s: each call O(1) and cheap) ---

    def claimed(self, queue_name: str, attempts: Sequence[Attempt]) -> None:
        stats = self.queue_stats(queue_name)
        stats.claimed += len(attempts)
        pickup = stats.pickup
        for attempt in attempts:
            if attempt.claimed_at is not None and attempt.schedule_time is not None:
                pickup.observe(max(0.0, (attempt.claimed_at - attempt.schedule_time).total_seconds()))

    def finished(self, attempt: Attempt, outcome: Outcome, seconds: float) -> None:
        stats = self.queue_stats(attempt.queue_name)
        kind = outcome.kind
        if kind is OutcomeKind.DONE:
            stats.succeeded += 1
        elif kind is OutcomeKind.RETRY:
            stats.retried += 1
        elif kind is OutcomeKind.FAILED:
            stats.failed += 1
        elif kind is OutcomeKind.RATE_LIMITED:
            stats.rate_limited += 1
        elif kind is OutcomeKind.CANCELLED:
            stats.cancelled += 1
        if outcome.timed_out:
            stats.timed_out += 1
        stats.run.observe(seconds)

    def rescued(self, table_name: str, count: int) -> None:
        """Not on the hot path: once per heartbeat at most, per table."""
        self.queue_stats(self.queue_of_table(table_name)).rescued += count

    # --- the schedule firer's listener (after each fire's commit) ---

    def schedule_fired(self, name: str, outcome: str, count: int) -> None:
        by_outcome = self.schedule_fires.setdefault(name, {})
        by_outcome[str(outcome)] = by_outcome.get(str(outcome), 0) + count

    def queue_of_table(self, table_name: str) -> str:
        """The queue_name of a table; the table's own name when no queue has it now."""
        return self.catalog.queue_of_table.get(table_name, table_name)

    def queue_stats(self, queue_name: str) -> QueueStats:
        stats = self.queues.get(queue_name)
        if stats is None:
            stats = self.queues[queue_name] = QueueStats()
        return stats

    # --- HTTP ---------------------------------------------------------------

    def routes(self) -> list[tuple[Endpoint, Callable[[Any, Any], bytes]]]:
        """For admin.create_app: served and documented like the admin's own routes."""
        endpoint = Endpoint(
            "GET",
            "/metrics",
            "Prometheus metrics of this server (text format 0.0.4)",
            {"type": "string"},
            tag="metrics",
            auth=bool(self.token),
            uses_database=False,
            raw="text/plain",
        )
        return [(endpoint, self.serve)]

    def serve(self, admin: Any, call: Any) -> bytes:
        if self.token:
            require_bearer(self.token)
        body = self.exposition()
        bottle.response.content_type = CONTENT_TYPE_PLAIN_0_0_4
        return body

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HotPathCollector(Collector):
    """The hooks' counts and histograms, and the gauges read off this process."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics, server = self.metrics, self.metrics.server_id
        runners = list(metrics.running)
        for runner in runners:  # a queue that ran nothing yet still shows its zeros
            metrics.queue_stats(runner.queue_name)
        queues = sorted(metrics.queues.items())
        for name, slot, documentation in COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=QUEUE_SERVER)
            for queue, stats in queues:
                family.add_metric((queue, server), getattr(stats, slot))
            yield family
        yield self._histogram(
            "geventq_task_run_seconds",
            "Seconds from a task's claim to its handler's end, per attempt",
            queues,
            "run",
        )
        yield self._histogram(
            "geventq_task_pickup_latency_seconds",
            "Seconds from a task's schedule_time to its claim (database clock)",
            queues,
            "pickup",
        )
        yield from self._process_gauges(runners)
        yield from self._schedule_counters()

    def _schedule_counters(self) -> Iterator[Metric]:
        server, fires = self.metrics.server_id, sorted(self.metrics.schedule_fires.items())
        for name, outcome, documentation in SCHEDULE_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=("schedule", "server"))
            for schedule, by_outcome in fires:
                family.add_metric((schedule, server), by_outcome.get(outcome, 0))
            yield family

    def _histogram(
        self, name: str, documentation: str, queues: list[tuple[str, QueueStats]], slot: str
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=QUEUE_SERVER)
        for queue, stats in queues:
            buckets: Buckets = getattr(stats, slot)
            family.add_metric((queue, self.metrics.server_id), buckets.cumulative(), buckets.total)
        return family

    def _held_back(self, runners: Iterable[QueueRunner]) -> Metric:
        family = GaugeMetricFamily(
            "geventq_tasks_held_back",
            "Due tasks this server's last claim left pending because of a limit across the cluster "
            "(reason: global, rate, key, paused)",
            labels=(*QUEUE_SERVER, "reason"),
        )
        for runner in runners:
            for reason in HELD_REASONS:
                family.add_metric(
                    (runner.queue_name, self.metrics.server_id, reason), runner.held_back.get(reason, 0)
                )
        return family

    def _process_gauges(self, runners: Iterable[QueueRunner]) -> Iterator[Metric]:
        metrics, server = self.metrics, self.metrics.server_id
        running: dict[str, int] = {}
        pool_size: dict[str, int] = {}
        for runner in runners:  # a queue may be draining while its new runner starts
            running[runner.queue_name] = running.get(runner.queue_name, 0) + len(runner.pool)
            pool_size[runner.queue_name] = pool_size.get(runner.queue_name, 0) + runner.pool.size
        family = GaugeMetricFamily(
            "geventq_tasks_running", "Handlers running now, by queue", labels=QUEUE_SERVER
        )
        for queue in sorted(running):
            family.add_metric((queue, server), running[queue])
        yield family
        family = GaugeMetricFamily(
            "geventq_pool_size", "max_workers of the queue's pool on this server", labels=QUEUE_SERVER
        )
        for queue in sorted(pool_size):
            family.add_metric((queue, server), pool_size[queue])
        yield family
        yield self._held_back(runners)
        family = GaugeMetricFamily(
            "geventq_outcomes_buffered",
            "Outcomes waiting to be written to the database (recorder backlog)",
            labels=("server",),
        )
        family.add_metric((server,), metrics.outcome_backlog())
        yield family
        family = GaugeMetricFamily(
            "geventq_lease_valid",
            "1 while this server's heartbeat lease is valid (it may claim), else 0",
            labels=("server",),
        )
        family.add_metric((server,), 1 if metrics.lease.valid() else 0)
        yield family


class DatabaseCollector(Collector):
    """Gauges read from the database when scraped: the due pending tasks of
    every queue in queue_configs, whichever servers run it."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._due: dict[str, tuple[int, float | None]] = {}
        self._read_at = 0.0
        self._ok = False
        self._errors = Throttle(60)

    def collect(self) -> Iterator[Metric]:
        if time.monotonic() - self._read_at >= SCRAPE_DB_REUSE:
            self._read()
        pending = GaugeMetricFamily(
            "geventq_tasks_pending_due",
            "Pending tasks already due (schedule_time <= NOW()), by queue",
            labels=("queue",),
        )
        oldest = GaugeMetricFamily(
            "geventq_oldest_pending_due_age_seconds",
            "Seconds since the oldest due pending task was due (0 when none)",
            labels=("queue",),
        )
        if self._ok:
            for queue, (count, age) in sorted(self._due.items()):
                pending.add_metric((queue,), count)
                oldest.add_metric((queue,), age or 0.0)
        yield pending
        yield oldest
        ok = GaugeMetricFamily(
            "geventq_metrics_database_ok",
            "1 when this scrape could read the database gauges, else 0",
            labels=("server",),
        )
        ok.add_metric((self.metrics.server_id,), 1 if self._ok else 0)
        yield ok

    def _read(self) -> None:
        found = None
        try:
            # On timeout the connection is closed mid-statement (db.connection discards it).
            with gevent.Timeout(SCRAPE_DB_BUDGET, False):
                found = self.metrics.db.call(read_due_pending)
        except DatabaseError as error:
            self._log_error(str(error))
        else:
            if found is None:
                self._log_error(f"no answer within {SCRAPE_DB_BUDGET:g}s")
        self._read_at = time.monotonic()
        self._ok = found is not None
        if found is None:
            self._due = {}
            return
        self._due = found

    def _log_error(self, reason: str) -> None:
        if self._errors.ready():
            logger.warning(
                "/metrics: database gauges left out: database {}: {}", self.metrics.db.address, reason
            )


def read_due_pending(cur) -> dict[str, tuple[int, float | None]]:
    """Every queue's due pending tasks, on one connection."""
    return admin_store.due_pending_by_queue(cur, store.list_queue_configs(cur))

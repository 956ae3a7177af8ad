"""Housekeeping: deleting finished tasks past each queue's retention_days,
stale cancel requests, rate-window slices and old schedule fires, and pruning
old job logs. None of it is on the task's path; all of it runs from the maintenance pass
(servers.Maintenance) while the lease is valid."""

from __future__ import annotations

import time
import uuid

import gevent
from loguru import logger

from geventq import schedule_store, store
from geventq.catalog import QueueCatalog
from geventq.db import Database, QuotedTable
from geventq.logs import JobLogs

RETENTION_EVERY = 60.0
RETENTION_BATCH = 1000
LOG_PRUNE_EVERY = 3600.0
FIRES_PRUNE_EVERY = 3600.0
RETENTION_LOCK = "geventq_retention"
# Should a server die mid-pass, another may start a pass after this long
# (deleting finished tasks twice over is harmless, just wasted work).
RETENTION_LOCK_HOLD = 600.0
# The throughput chart reaches back a day at most (api_schema THROUGHPUT_QUERY).
COUNTS_KEEP_MINUTES = 1440 + 5


class Housekeeping:
    def __init__(
        self,
        db: Database,
        job_logs: JobLogs,
        log_retention_days: int,
        catalog: QueueCatalog,
        schedule_history_days: int = 0,
    ):
        self.db = db
        self.job_logs = job_logs
        self.log_retention_days = log_retention_days
        self.catalog = catalog  # each queue's table and retention_days
        self.schedule_history_days = schedule_history_days  # 0: keep every fire
        self._last_retention = 0.0
        self._last_log_prune = 0.0
        self._last_fires_prune = float("-inf")  # the first maintenance pass prunes

    def run_due(self) -> None:
        """Whatever is due: stale cancel requests every pass; retention and
        rate-window slices every minute; job-log pruning every hour."""
        self.remove_stale_cancel_requests()
        if time.monotonic() - self._last_retention > RETENTION_EVERY:
            self._last_retention = time.monotonic()
            self.apply_retention()
            self.prune_rate_slices()
            self.fold_outcome_counts()
        if time.monotonic() - self._last_log_prune > LOG_PRUNE_EVERY:
            self._last_log_prune = time.monotonic()
            self.job_logs.prune(self.log_retention_days)
        if self.schedule_history_days and time.monotonic() - self._last_fires_prune > FIRES_PRUNE_EVERY:
            self._last_fires_prune = time.monotonic()
            self.prune_schedule_fires()

    def prune_schedule_fires(self) -> None:
        """Ledger rows older than schedule_history_days, in small batches. A
        schedule's latest scheduled fire stays whatever its age: while its
        queue is missing its tasks go to that fire's table. Every server may
        do this at once: each batch is a bounded, idempotent DELETE."""
        schedules, cutoff = self.db.call(schedule_store.schedules_for_pruning, self.schedule_history_days)
        deleted = 0
        for schedule in schedules:
            deleted += self._prune_batches(
                schedule_store.prune_fires, schedule["id"], cutoff, schedule["last_fire_at"]
            )
        deleted += self._prune_batches(schedule_store.prune_orphan_fires, cutoff)
        if deleted:
            logger.info(
                "schedule history: deleted {} fires older than {} days", deleted, self.schedule_history_days
            )

    def _prune_batches(self, prune, *args) -> int:
        deleted = 0
        while True:
            count = self.db.call(prune, *args, RETENTION_BATCH)
            deleted += count
            if count < RETENTION_BATCH:
                return deleted
            gevent.sleep(0.05)

    def remove_stale_cancel_requests(self) -> int:
        """Requests whose attempt ended before its owner acted on them."""
        removed = 0
        for table_name in self.db.call(store.tables_with_cancel_requests):
            table = self.catalog.table(table_name)
            if table is not None:
                removed += self.db.call(store.delete_stale_cancel_requests, table, table_name)
        return removed

    def prune_rate_slices(self) -> int:
        """Slices of the rate window that no window reaches any more."""
        periods = {
            name: limits.rate_period for name, limits in self.catalog.limits.items() if limits.rate_limit
        }
        return self.db.call(store.delete_old_rate_slices, periods)

    def fold_outcome_counts(self) -> int:
        """Outcome counters of minutes the throughput chart no longer shows,
        folded into each table's totals: the counters stay a day long."""
        return self.db.call(store.fold_old_outcome_counts, COUNTS_KEEP_MINUTES, transaction=True)

    def apply_retention(self) -> None:
        """Delete finished tasks past each queue's retention_days, in small
        batches, on one server at a time (a named lock decides which)."""
        keep_days = {name: days for name, days in self.catalog.retention_days.items() if days > 0}
        if not keep_days:
            return
        tables = self.catalog.tables
        holder = uuid.uuid4().hex
        if not self.db.call(store.try_named_lock, RETENTION_LOCK, holder, RETENTION_LOCK_HOLD):
            return
        try:
            for table_name, days in keep_days.items():
                table = tables.get(table_name)
                if table is not None:
                    self._delete_expired(table_name, table, days)
        finally:
            self.db.call(store.release_named_lock, RETENTION_LOCK, holder)

    def _delete_expired(self, table_name: str, table: QuotedTable, days: int) -> None:
        deleted = 0
        while True:
            count = self.db.call(store.delete_finished_tasks, table, days, RETENTION_BATCH)
            deleted += count
            if count < RETENTION_BATCH:
                break
            gevent.sleep(0.05)  # let claims in between: short locks, never a long one
        if deleted:
            logger.info(
                "retention: deleted {} finished tasks older than {} days from {}", deleted, days, table_name
            )

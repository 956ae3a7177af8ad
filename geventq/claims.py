"""Claiming due tasks: the one place that turns pending rows into attempts
of this server. The way to claim is chosen once, at start-up, by the
server's version (or `database.claim_mode`):

- SKIP LOCKED (MariaDB 10.6+, MySQL 8.0.1+): one short READ COMMITTED
  transaction on a pool without autocommit, SELECT … FOR UPDATE SKIP LOCKED,
  UPDATE, COMMIT: three round trips;
- otherwise a conditional UPDATE per candidate, which succeeds only while the
  row is still pending.

On a Galera cluster (wsrep_on, detected at start-up) row locks are local to
a node: with the plain SKIP LOCKED claim every server would lock the same
head rows on its own node and all but one would lose the whole claim at
COMMIT (a certification failure). There each live server claims its own
share of the due rows first (claim_share, store.claim_due_tasks_in_share)
and, after a certification failure, re-reads who is live and backs off for
a moment. The one-node claim is untouched.

A queue with a limit across the cluster (limits.py) claims under the lock of
its `queue_state` row instead: the limits count running rows and starts, so
those claims must take turns. Queues without limits keep the plain claim
and its speed; a pause a handler asked for (RateLimited) is honoured by both.

Only task types with a handler here are claimed, so a task is never lost to
a server that cannot run it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from geventq import limits, store
from geventq.db import Database, QuotedTable
from geventq.errors import DatabaseError, RetryableConflict
from geventq.limits import QueueLimits

LIMITED_RECHECK = 1.0  # seconds: a cap may free on another server without telling us
# On a cluster: each server's share moves on to the next one this often, so a
# share whose server is gone, or does not run the queue, waits at most this
# long (times the servers missing in a row) while the others have a backlog.
SHARE_ROTATION = 1.0
MEMBERS_MAX_AGE = 2.0  # seconds between reads of who is live (sooner after a lost race)
CONFLICT_BACKOFF = 0.05  # up to this long, at random, after a claim lost at COMMIT


def claim_share(server_id: str, live: Sequence[str], now: float) -> tuple[int, int]:
    """(part, parts): which share of the due rows this server claims first on
    a cluster. Every live server, in server_id order, has its own part at any
    moment (they all see the same list and the same clock, near enough), and
    every part moves to the next server each SHARE_ROTATION seconds, so no
    part stays without a server for long."""
    members = sorted(set(live) | {server_id})
    parts = len(members)
    turn = int(now // SHARE_ROTATION)
    return (members.index(server_id) + turn) % parts, parts


class ClaimResult(NamedTuple):
    rows: list[dict[str, Any]]
    # Due tasks a limit left pending, by reason (limits.HELD_REASONS); empty when none was.
    held: dict[str, int] = {}
    # When a limit may allow more, in seconds (None: not held, or unknown).
    retry_in: float | None = None


class Claimer:
    def __init__(
        self,
        db: Database,
        claim_db: Database,
        server_id: str,
        task_types: Sequence[str],
        skip_locked: bool,
        *,
        cluster: bool = False,
        heartbeat_timeout: float = 30.0,
    ):
        self.db = db
        self.claim_db = claim_db  # autocommit off: the first statement opens the transaction
        self.server_id = server_id
        self.task_types = tuple(task_types)
        self.skip_locked = skip_locked
        self.cluster = cluster  # a Galera cluster: SKIP LOCKED claims take shares
        self.heartbeat_timeout = heartbeat_timeout
        self._live: list[str] = [server_id]
        self._live_read_at = float("-inf")

    @property
    def method(self) -> str:
        if not self.skip_locked:
            return "conditional UPDATE"
        return "SKIP LOCKED, a share per server (Galera)" if self.cluster else "SKIP LOCKED"

    def claim(
        self,
        table: QuotedTable,
        limit: int,
        queue_name: str,
        queue_limits: QueueLimits = limits.NO_LIMITS,
        *,
        order: str = store.CLAIM_ORDER,
        has_key_column: bool = False,
    ) -> ClaimResult:
        """Up to `limit` due tasks in `order` (store.claim_order), marked
        running under our server_id and committed; raises DatabaseError when
        the database fails. The rows are committed before they are returned,
        so no handler starts on a claim that did not commit."""
        try:
            return self._claim(table, limit, queue_name, queue_limits, order, has_key_column)
        except RetryableConflict:
            # Another server took these rows, or the queue's row, first (on a
            # Galera cluster SKIP LOCKED is local to a node, so two nodes can
            # lock the same rows and one learns it at COMMIT), again and again
            # through Database.call's retries: the rows are given up, nothing
            # started, and the next scan comes soon (as when nothing is due).
            if not self.cluster:
                return ClaimResult([])
            # Shares overlapped (a server came or went) or top-ups met: look
            # at who is live again, and wait a random moment so the servers
            # that met do not meet again at once.
            self._live_read_at = float("-inf")
            return ClaimResult([], retry_in=random.uniform(0, CONFLICT_BACKOFF))

    def _claim(
        self,
        table: QuotedTable,
        limit: int,
        queue_name: str,
        queue_limits: QueueLimits,
        order: str,
        has_key_column: bool,
    ) -> ClaimResult:
        if queue_limits.any:
            return self.claim_db.call(
                self._claim_limited,
                table,
                limit,
                queue_name,
                queue_limits,
                order,
                has_key_column,
                transaction=True,
            )
        if self.skip_locked and self.cluster:
            rows = self.claim_db.call(
                store.claim_due_tasks_in_share,
                table,
                self.server_id,
                self.task_types,
                limit,
                queue_name,
                self._share(),
                order,
                transaction=True,
            )
            return ClaimResult(rows)
        if self.skip_locked:
            rows = self.claim_db.call(
                store.claim_due_tasks_skip_locked,
                table,
                self.server_id,
                self.task_types,
                limit,
                queue_name,
                order,
                transaction=True,
            )
            return ClaimResult(rows)
        return ClaimResult(self.db.call(self._claim_conditional, table, limit, queue_name, order))

    def _share(self) -> tuple[int, int]:
        """This server's share now; the live servers are re-read every
        MEMBERS_MAX_AGE seconds (a failed read keeps the last list)."""
        if time.monotonic() - self._live_read_at >= MEMBERS_MAX_AGE:
            self._live_read_at = time.monotonic()
            try:
                self._live = self.db.call(store.live_server_ids, self.heartbeat_timeout)
            except DatabaseError:
                pass
        return claim_share(self.server_id, self._live, time.time())

    def table_features(self, table_name: str) -> store.TaskTableFeatures:
        """The task table's optional columns: read once when a queue starts."""
        return self.db.call(store.task_table_features, table_name)

    def seconds_until_next_due(self, table: QuotedTable, queue_name: str) -> float | None:
        """How long until the earliest pending task we could run falls due (or
        the queue's pause ends); None: none pending."""
        return self.db.call(store.seconds_until_next_due, table, self.task_types, queue_name)

    def _claim_conditional(
        self, cur, table: QuotedTable, limit: int, queue_name: str, order: str
    ) -> list[dict[str, Any]]:
        candidates = store.find_due_tasks(cur, table, self.task_types, limit, queue_name, order)
        if not candidates:
            return []
        now = store.database_now(cur)
        taken = [
            row
            for row in candidates
            if store.claim_one_if_pending(cur, table, self.server_id, row["id"], now)
        ]
        for row in taken:
            row["claimed_at"] = now
        return taken

    # --- under the queue's limits ------------------------------------------------

    def _claim_limited(
        self,
        cur,
        table: QuotedTable,
        wanted: int,
        queue_name: str,
        queue_limits: QueueLimits,
        order: str,
        has_key: bool,
    ) -> ClaimResult:
        """One transaction under the queue's row lock: count, then claim what fits."""
        state = store.lock_queue_state(cur, queue_name)
        now, utc_now = state["now"], state["utc_now"]
        held: dict[str, int] = {}
        retry_in: float | None = None
        room, reason = wanted, ""
        if state["paused_until"] is not None and state["paused_until"] > now:
            room, reason = 0, "paused"
            retry_in = (state["paused_until"] - now).total_seconds()
        if room and queue_limits.global_max_workers:
            free = limits.global_room(queue_limits, store.count_running(cur, table))
            if free < room:
                room, reason, retry_in = free, "global", LIMITED_RECHECK
        if room and queue_limits.rate_limit:
            used, first_end = store.rate_window(cur, queue_name, limits.window_start(utc_now, queue_limits))
            free = limits.rate_room(queue_limits, used)
            if free < room:
                room, reason = free, "rate"
                retry_in = limits.seconds_until_rate_room(first_end, utc_now, queue_limits)
        rows: list[dict[str, Any]] = []
        if room:
            rows, stepped_over = self._lock_fitting(cur, table, room, queue_limits, order, has_key)
            if stepped_over:
                held["key"] = stepped_over
                retry_in = retry_in if retry_in is not None else LIMITED_RECHECK
        if reason:
            held[reason] = max(0, store.count_due(cur, table, self.task_types, wanted) - len(rows))
        if rows:
            # The latest clock read, after every count: one start time for the batch.
            claimed_at, claimed_utc = max((row["claimed_at"], row["claimed_utc"]) for row in rows)
            for row in rows:
                row["claimed_at"] = claimed_at
            store.mark_claimed(cur, table, self.server_id, [row["id"] for row in rows], claimed_at)
            if queue_limits.rate_limit:
                start, end = limits.current_slice(claimed_utc, queue_limits)
                store.count_starts(cur, queue_name, start, end, len(rows))
        store.record_limited_claim(cur, queue_name, held)
        return ClaimResult(rows, {name: count for name, count in held.items() if count}, retry_in)

    def _lock_fitting(
        self, cur, table: QuotedTable, room: int, queue_limits: QueueLimits, order: str, has_key: bool
    ) -> tuple[list[dict[str, Any]], int]:
        """Lock due tasks in claim order, up to `room`; with a per-key cap,
        over-fetch and step over tasks whose key is full, so one busy key
        never blocks the others behind it. Returns (rows, stepped over)."""
        if not (queue_limits.key_max_workers and has_key):
            return store.lock_due_candidates(
                cur, table, self.task_types, room, order=order, skip_locked=self.skip_locked
            ), 0
        running = store.running_by_key(cur, table)
        taken: list[dict[str, Any]] = []
        stepped_over = scanned = 0
        after: dict[str, Any] | None = None
        batch = max(4 * room, 50)
        while len(taken) < room and scanned < limits.KEY_SCAN_LIMIT:
            candidates = store.lock_due_candidates(
                cur,
                table,
                self.task_types,
                batch,
                order=order,
                with_key=True,
                after=after,
                skip_locked=self.skip_locked,
            )
            if not candidates:
                break
            scanned += len(candidates)
            fits, skipped = limits.pick_by_key(
                candidates, running, queue_limits.key_max_workers, room - len(taken)
            )
            taken.extend(fits)
            stepped_over += skipped
            after = candidates[-1]
            if len(candidates) < batch:
                break
        return taken, stepped_over


def use_skip_locked(claim_mode: str, version: str) -> bool:
    """`database.claim_mode` auto: SKIP LOCKED where the server has it."""
    if claim_mode == "auto":
        return store.supports_skip_locked(version)
    return claim_mode == "skip_locked"

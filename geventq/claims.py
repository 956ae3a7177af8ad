"""Claiming due tasks: the one place that turns pending rows into attempts
of this server. The way to claim is chosen once, at start-up, by the
server's version (or `database.claim_mode`):

- SKIP LOCKED (MariaDB 10.6+, MySQL 8.0.1+): one short READ COMMITTED
  transaction on a pool without autocommit, SELECT … FOR UPDATE SKIP LOCKED,
  UPDATE, COMMIT: three round trips;
- otherwise a conditional UPDATE per candidate, which succeeds only while the
  row is still pending.

Only task types with a handler here are claimed, so a task is never lost to
a server that cannot run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from geventq import store
from geventq.db import Database, QuotedTable


class Claimer:
    def __init__(
        self, db: Database, claim_db: Database, server_id: str, task_types: Sequence[str], skip_locked: bool
    ):
        self.db = db
        self.claim_db = claim_db  # autocommit off: the first statement opens the transaction
        self.server_id = server_id
        self.task_types = tuple(task_types)
        self.skip_locked = skip_locked

    @property
    def method(self) -> str:
        return "SKIP LOCKED" if self.skip_locked else "conditional UPDATE"

    def claim(self, table: QuotedTable, limit: int, order: str = store.CLAIM_ORDER) -> list[dict[str, Any]]:
        """Up to `limit` due tasks in `order` (store.claim_order), marked
        running under our server_id and committed; raises DatabaseError when
        the database fails."""
        if self.skip_locked:
            return self.claim_db.call(
                store.claim_due_tasks_skip_locked,
                table,
                self.server_id,
                self.task_types,
                limit,
                order,
                transaction=True,
            )
        return self.db.call(self._claim_conditional, table, limit, order)

    def table_features(self, table_name: str) -> store.TaskTableFeatures:
        """The task table's optional columns: read once when a queue starts."""
        return self.db.call(store.task_table_features, table_name)

    def seconds_until_next_due(self, table: QuotedTable) -> float | None:
        """How long until the earliest pending task we could run falls due; None: none pending."""
        return self.db.call(store.seconds_until_next_due, table, self.task_types)

    def _claim_conditional(self, cur, table: QuotedTable, limit: int, order: str) -> list[dict[str, Any]]:
        candidates = store.find_due_tasks(cur, table, self.task_types, limit, order)
        now = store.database_now(cur) if candidates else None
        taken = [
            row for row in candidates if store.claim_one_if_pending(cur, table, self.server_id, row["id"])
        ]
        for row in taken:
            row["claimed_at"] = now
        return taken


def use_skip_locked(claim_mode: str, version: str) -> bool:
    """`database.claim_mode` auto: SKIP LOCKED where the server has it."""
    if claim_mode == "auto":
        return store.supports_skip_locked(version)
    return claim_mode == "skip_locked"

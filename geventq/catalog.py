"""What `queue_configs` registers, as of the last config sync: each queue's
task table (checked and quoted once), its retention, and which queue a table
belongs to. The config sync writes it; the admin, the rescue, reconcile,
housekeeping and metrics read it. Every registered table counts, not only the
queues this server runs: a rescue or a reconcile must look at all of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loguru import logger

from geventq.db import QuotedTable, quote_table
from geventq.errors import InvalidIdentifier
from geventq.limits import QueueLimits


class QueueCatalog:
    def __init__(self) -> None:
        self.tables: dict[str, QuotedTable] = {}  # table_name -> quoted identifier
        self.retention_days: dict[str, int] = {}  # table_name -> retention_days (0 = forever)
        self.queue_of_table: dict[str, str] = {}  # table_name -> queue_name
        self.limits: dict[str, QueueLimits] = {}  # queue_name -> its limits across the cluster
        self._reported_bad: set[str] = set()

    def update(self, rows: Iterable[dict[str, Any]]) -> None:
        """Take the queue_configs rows as they are now. A table name that
        fails the identifier check is left out, and logged once."""
        tables, retention, queues, limits = {}, {}, {}, {}
        for row in rows:
            name = row["table_name"]
            try:
                tables[name] = quote_table(name, None)
            except InvalidIdentifier as error:
                if name not in self._reported_bad:
                    logger.error("queue {} is skipped: {}", row["queue_name"], error)
                self._reported_bad.add(name)
                continue
            retention[name] = int(row.get("retention_days") or 0)
            queues[name] = row["queue_name"]
            limits[row["queue_name"]] = QueueLimits.from_row(row)
        # Whole dicts swapped at once: readers on other greenlets never see a half update.
        self.tables, self.retention_days, self.queue_of_table = tables, retention, queues
        self.limits = limits

    def table(self, table_name: str) -> QuotedTable | None:
        return self.tables.get(table_name)

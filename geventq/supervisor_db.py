"""What the supervisor asks of the database: its children's heartbeats, and
the rescue of a dead child's running tasks. Plain threads' waiting (db.THREADS):
the supervisor is not monkey-patched. The SQL is store.py's.

A dead child's tasks are requeued exactly as a restart under the same
server_id requeues them (store.recover_own_orphans: counted as an attempt,
failed once retries are exhausted), only at once instead of when the
replacement starts, and well before heartbeat_timeout would let another
server rescue them. The child is reaped first: a process we have waited for
runs nothing, so no attempt can run twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from loguru import logger

from geventq import store
from geventq.catalog import QueueCatalog
from geventq.config import DatabaseConfig
from geventq.db import THREADS, Database
from geventq.errors import DatabaseError

# The supervisor's loop also reaps children and answers signals: a slow or
# black-holed database must not hold it for database.read_timeout.
READ_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Heartbeat:
    pid: int
    state: str
    age: float  # seconds since the last heartbeat, by the database clock


class SupervisorDatabase:
    def __init__(self, config: DatabaseConfig):
        quick = dataclasses.replace(
            config,
            read_timeout=min(config.read_timeout, READ_TIMEOUT),
            connect_timeout=min(config.connect_timeout, CONNECT_TIMEOUT),
        )
        self.db = Database(quick, size=1, name="supervisor", waiting=THREADS)

    def heartbeats(self, server_ids: list[str]) -> dict[str, Heartbeat]:
        """Raises DatabaseError when the database cannot say."""
        rows = self.db.call(store.server_heartbeats, server_ids)
        return {
            row["server_id"]: Heartbeat(int(row["pid"]), row["state"], float(row["heartbeat_age"]))
            for row in rows
        }

    def rescue(self, server_id: str) -> int | None:
        """Requeue what a dead child left running and mark it offline; the
        number of tasks, or None when the database could not be reached (the
        replacement, same server_id, requeues them as it starts)."""
        try:
            catalog = QueueCatalog()
            catalog.update(self.db.call(store.list_queue_configs))
            total = 0
            for table_name, table in catalog.tables.items():
                total += self.db.call(store.recover_own_orphans, table, table_name, server_id)
            self.db.call(store.mark_server_offline, server_id)
        except DatabaseError as error:
            logger.warning("could not rescue the tasks of {} now: {}", server_id, error)
            return None
        return total

    def close(self) -> None:
        self.db.close()

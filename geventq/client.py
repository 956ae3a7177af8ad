"""geventq.Client: the producer API for other Python programs (web apps,
scripts, notebooks). No gevent needed, no monkey-patching: a plain threaded
program shares one Client between its threads.

    client = geventq.Client("config.json")          # or Client(host=..., database=...)
    task_id = client.enqueue("email_queue", "email", {"to": "a@example.com"})

Connections come from a pool of database.pool_size at most, made with the
standard library's queue and semaphore (db.THREADS). After tasks are added a
daemon thread tells the servers that run the queue to claim now (POST
/admin/queue/wake, with admin.token), so they start within milliseconds
instead of at their next scan; a wake that fails changes nothing but that.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from geventq import admin_store, config
from geventq.attempts import Status
from geventq.db import THREADS, Database
from geventq.errors import DatabaseError
from geventq.peers import WAKE_TIMEOUT, KeepAlive, base_url, parse_queue_list
from geventq.producer import BulkRetry, Producer, Target, TaskId

__all__ = ["BulkRetry", "Client", "TaskId"]

# The stdlib logger: a library must not print into its host program's stderr
# unless that program asked for it (loguru would, at DEBUG).
log = logging.getLogger("geventq.client")
DIRECTORY_MAX_AGE = 1.0


class Client:
    """Enqueue, inspect, cancel and retry tasks by queue name; safe across threads.

    `Client(config_path)` reads a geventq config.json (its database section,
    admin.token and executor.heartbeat_timeout); `Client(**database)` takes
    the database keys of config.json instead (host, port, username, password,
    database, charset, pool_size, connect_timeout, read_timeout), and both
    together override the file's; `Client()` reads $GEVENTQ_CONFIG or
    ./config.json as the geventq command does. Errors: geventq.errors
    (ConfigError, UnknownQueue, InvalidTask, TaskNotFound, TaskStateError,
    DatabaseUnavailable), each message naming the problem.
    """

    def __init__(
        self,
        config_path: str | os.PathLike[str] | None = None,
        *,
        admin_token: str | None = None,
        wake: bool = True,
        **database: Any,
    ):
        self.config = config.load(
            config_path,
            {f"database.{key}": value for key, value in database.items()},
            search=not database,
        )
        self._db = Database(self.config.database, name="client", waiting=THREADS)
        token = self.config.admin.token if admin_token is None else admin_token
        self._waker = Waker(self._db, self.config.executor.heartbeat_timeout, token) if wake else None
        self._producer = Producer(self._db, on_added=self._waker.wake if self._waker else None)

    def enqueue(
        self,
        queue: str,
        task_type: str,
        params: Any = None,
        *,
        at: datetime | None = None,
        delay: float | None = None,
        max_retries: int | None = None,
        priority: int | None = None,
        dedupe_key: str | None = None,
        concurrency_key: str | None = None,
    ) -> TaskId:
        """Add one task; its id. `params`: a dict or list (or JSON text of
        one), handed to the handler as ctx.params. `at`: when it falls due (a
        naive datetime is in the database's time zone), or `delay` seconds
        from now by the database clock; default now. `max_retries`: default
        the table's (3). `priority` (smaller first), `dedupe_key` and
        `concurrency_key` need their columns in the queue's table. With a
        dedupe_key that a pending or running task holds, nothing is added and
        that task's id comes back with `.duplicate` True."""
        return self._producer.enqueue(
            queue,
            task_type,
            params,
            at=at,
            delay=delay,
            max_retries=max_retries,
            priority=priority,
            dedupe_key=dedupe_key,
            concurrency_key=concurrency_key,
        )

    def enqueue_many(self, queue: str, tasks: Iterable[Mapping[str, Any]]) -> list[TaskId]:
        """Add many tasks, all or none, one INSERT per 10,000; their ids in
        order. Each task is a dict with `task_type` and, optionally, `params`
        and enqueue's keyword arguments."""
        return self._producer.enqueue_many(queue, tasks)

    def get(self, queue: str, task_id: int) -> dict[str, Any] | None:
        """The task's row as a dict, task_params parsed; None if there is none."""
        return self._producer.get(queue, task_id)

    def cancel(self, queue: str, task_id: int) -> dict[str, Any]:
        """Pending to cancelled; the task after. TaskNotFound, or
        TaskStateError when the task is not pending."""
        return self._producer.cancel(queue, task_id)

    def retry(self, queue: str, task_id: int) -> dict[str, Any]:
        """Failed or cancelled back to pending, due now, retry_count 0; the task after."""
        return self._producer.retry(queue, task_id)

    def retry_all(
        self,
        queue: str,
        status: Status = Status.FAILED,
        task_type: str | None = None,
        *,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> BulkRetry:
        """Every failed (or cancelled) task of the queue back to pending, in
        batches of 1,000; `progress(retried, skipped, total)` after each."""
        return self._producer.retry_all(queue, status, task_type, progress=progress)

    def list_tasks(
        self,
        queue: str,
        status: Status | int | None = None,
        task_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of the queue's tasks, newest first, as admin task/list
        answers it: {"items": [...], "next_offset": N or None}."""
        return self._producer.list_tasks(queue, status, task_type, limit, offset)

    def queues(self) -> list[dict[str, Any]]:
        """Every queue_configs row with `counts` of its tasks by status."""
        return self._db.call(admin_store.queue_overview)

    def schedules(self) -> list[dict[str, Any]] | None:
        """The schedules table's rows; None where this database has none."""
        return self._db.call(admin_store.list_schedules)

    def close(self) -> None:
        """Send the wakes still wanted, stop the wake thread, close the pooled connections."""
        if self._waker is not None:
            self._waker.stop()
        self._db.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class Waker:
    """Sends wakes from one daemon thread, so enqueue never waits on HTTP.

    Tables to wake collect in a set: any number of enqueues while a round of
    wakes is out collapse into one more round. Who runs what is read from the
    `servers` table at most once a second, by this thread."""

    def __init__(self, db: Database, heartbeat_timeout: float, token: str):
        self._db = db
        self._heartbeat_timeout = heartbeat_timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._wanted: dict[str, str] = {}  # table_name -> queue_name
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._peers: list[tuple[str, list[str]]] = []  # (url, queues)
        self._read_at = float("-inf")
        self._connections = KeepAlive()

    def wake(self, target: Target) -> None:
        with self._changed:
            self._wanted[target.table_name] = target.queue_name
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name="geventq-client-wake", daemon=True)
                self._thread.start()
            self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=2 * WAKE_TIMEOUT)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._wanted and not self._stopping:
                    self._changed.wait()
                if not self._wanted:  # stopping, nothing left to send
                    return
                wanted, self._wanted = self._wanted, {}
            try:
                self._send(wanted)
            except Exception:
                log.exception("geventq client: sending wakes failed")

    def _send(self, wanted: dict[str, str]) -> None:
        self._refresh()
        for url, queues in self._peers:
            for table_name, queue_name in wanted.items():
                if queue_name in queues:
                    self._post(url, table_name)

    def _post(self, url: str, table_name: str) -> None:
        target = "/admin/queue/wake?" + urllib.parse.urlencode({"table": table_name})
        try:
            status, _ = self._connections.request(url, "POST", target, self._headers, WAKE_TIMEOUT)
            if status != 200:
                log.debug("waking %s at %s: HTTP %s", table_name, url, status)
        except (OSError, http.client.HTTPException) as error:
            log.debug("waking %s at %s failed: %s", table_name, url, error)

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at < DIRECTORY_MAX_AGE:
            return
        try:
            rows = self._db.call(admin_store.live_peers, self._heartbeat_timeout, "")
        except DatabaseError as error:
            log.debug("geventq client: cannot read the servers table: %s", error)
            return
        self._peers = [
            (base_url(row["admin_address"], row.get("host", "")), parse_queue_list(row["queues"]))
            for row in rows
            if row["admin_address"]
        ]
        self._read_at = time.monotonic()
        self._connections.keep_only({url for url, _ in self._peers})

"""Talking to the other servers' admin APIs.

- Waking their scanners after a task was created here, so a queue that runs
  elsewhere starts the task at once instead of at its next scan. Fire and
  forget, in greenlets: the request that created the task never waits.
  Wakes for one (server, table) never pile up: while one is in flight, any
  number of new ones collapse into a single follow-up.
- Fetching a task's job log from the server that ran it.

Who runs what comes from a cached view of the `servers` table, refreshed at
most once a second and only by the greenlets that send wakes.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from typing import Any

import gevent
import ujson
from gevent.lock import Semaphore
from loguru import logger

from geventq import admin_store, store
from geventq.db import Database
from geventq.errors import DatabaseError, GeventqError

DIRECTORY_MAX_AGE = 1.0
WAKE_TIMEOUT = 1.0
LOG_TIMEOUT = 5.0
UNSPECIFIED_HOSTS = {"", "0.0.0.0", "::", "[::]"}


class PeerUnreachable(GeventqError):
    """Another server's admin API did not answer as expected."""


def base_url(admin_address: str, host: str = "") -> str:
    """http://host:port for an admin address; a wildcard bind address is
    replaced by the server's host name, which is where it can be reached."""
    address_host, _, port = admin_address.rpartition(":")
    if address_host in UNSPECIFIED_HOSTS and host:
        address_host = host
    if ":" in address_host and not address_host.startswith("["):
        address_host = f"[{address_host}]"
    return f"http://{address_host}:{port}"


class Peers:
    def __init__(self, db: Database, server_id: str, heartbeat_timeout: float, token: str):
        self.db = db
        self.server_id = server_id
        self.heartbeat_timeout = heartbeat_timeout
        self.token = token  # admin.token: every server of a cluster shares it
        self._peers: list[dict[str, Any]] = []
        self._queue_of_table: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._refresh_lock = Semaphore()
        # (base url, target) -> True when another POST is wanted after the one in flight
        self._in_flight: dict[tuple[str, str], bool] = {}
        self._connections = KeepAlive()

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # --- wakes ---------------------------------------------------------------

    def wake(self, table_name: str) -> None:
        """Ask every other live server that runs the queue of `table_name` to
        scan it now. Returns at once."""
        gevent.spawn(self._wake_all, table_name)

    def _wake_all(self, table_name: str) -> None:
        # The cached view goes first, so a wake never waits for the database.
        # A table it does not know yet (a queue created a moment ago) is worth
        # a refresh before giving up on it, and so is a queue no server in it
        # runs (one that started running a moment ago): at most once a second.
        fresh = table_name not in self._queue_of_table and self._refresh(force=True)
        runners = self._runners_of(table_name)
        if not runners and not fresh:
            fresh = self._refresh(force=False)
            runners = self._runners_of(table_name)
        for url in runners:
            self._wake_one(url, table_name)
        if not fresh:
            self._refresh(force=False)

    def _runners_of(self, table_name: str) -> list[str]:
        """The URLs of the live peers the cached view says run this table's queue."""
        queue_name = self._queue_of_table.get(table_name)
        if queue_name is None:
            return []
        return [peer["url"] for peer in self._peers if queue_name in peer["queues"]]

    def _wake_one(self, url: str, table_name: str) -> None:
        self._post_coalesced(url, "/admin/queue/wake?" + urllib.parse.urlencode({"table": table_name}))

    def check_cancels(self, server_id: str) -> None:
        """Ask a live server to look for its cancel requests now. Returns at once."""
        gevent.spawn(self._check_cancels, server_id)

    def _check_cancels(self, server_id: str) -> None:
        peer = self._peer(server_id) or (self._refresh(force=True) and self._peer(server_id))
        if peer:
            self._post_coalesced(peer["url"], "/admin/cancels/check")

    def _peer(self, server_id: str) -> dict[str, Any] | None:
        return next((peer for peer in self._peers if peer["server_id"] == server_id), None)

    def _post_coalesced(self, url: str, target: str) -> None:
        """POST `target` to a peer; while one is in flight, any number of new
        ones collapse into a single follow-up."""
        key = (url, target)
        if key in self._in_flight:
            self._in_flight[key] = True
            return
        self._in_flight[key] = False
        gevent.spawn(self._send_posts, key)

    def _send_posts(self, key: tuple[str, str]) -> None:
        url, target = key
        try:
            while True:
                self._post(url, target)
                if not self._in_flight.get(key):
                    return
                self._in_flight[key] = False
        finally:
            self._in_flight.pop(key, None)

    def _post(self, url: str, target: str) -> None:
        try:
            status, _ = self._connections.request(url, "POST", target, self._auth_headers(), WAKE_TIMEOUT)
            if status != 200:
                logger.debug("POST {} at {}: HTTP {}", target, url, status)
        except (OSError, http.client.HTTPException) as error:
            logger.debug("POST {} at {} failed: {}", target, url, error)

    def _refresh(self, force: bool) -> bool:
        """Re-read who runs what when the view is older than a second (or
        `force`); True when it was read now. Never raises."""
        with self._refresh_lock:
            if not force and time.monotonic() - self._fetched_at < DIRECTORY_MAX_AGE:
                return False
            try:
                rows = self.db.call(admin_store.live_peers, self.heartbeat_timeout, self.server_id)
                queues = self.db.call(store.list_queue_configs)
            except DatabaseError as error:
                logger.debug("peer wakes: cannot read the servers table: {}", error)
                return False
            self._peers = [
                {
                    "server_id": row["server_id"],
                    "queues": parse_queue_list(row["queues"]),
                    "url": base_url(row["admin_address"], row.get("host", "")),
                }
                for row in rows
                if row["admin_address"]
            ]
            self._queue_of_table = {queue["table_name"]: queue["queue_name"] for queue in queues}
            self._fetched_at = time.monotonic()
            self._connections.keep_only({peer["url"] for peer in self._peers})
            return True

    # --- job logs --------------------------------------------------------------

    def fetch_log(
        self, peer: dict[str, Any], table_name: str, task_id: int, authorization: str | None
    ) -> str:
        """The job log text of a task, as the server that ran it has it."""
        url = base_url(peer["admin_address"], peer.get("host", ""))
        target = "/admin/task/log?" + urllib.parse.urlencode({"table": table_name, "id": task_id, "local": 1})
        headers = {"Authorization": authorization} if authorization else self._auth_headers()
        try:
            status, raw = self._connections.request(url, "GET", target, headers, LOG_TIMEOUT)
            body = ujson.loads(raw)
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise PeerUnreachable(f"server {peer['server_id']} at {url} did not answer: {error}") from None
        if status != 200:
            raise PeerUnreachable(f"server {peer['server_id']} at {url} answered {status}")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("log"), str):
            raise PeerUnreachable(f"server {peer['server_id']} at {url} sent no log")
        return data["log"]


class KeepAlive:
    """Idle HTTP connections per peer, reused so that a wake costs one round
    trip instead of a TCP handshake too. urllib is avoided on purpose: it
    would send a loopback wake through any proxy the environment names."""

    def __init__(self):
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}

    def request(
        self, url: str, method: str, target: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        idle = self._idle.setdefault(url, [])
        reused = bool(idle)
        conn = idle.pop() if idle else self._connect(url, timeout)
        try:
            conn.request(method, target, body=b"", headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            if not reused:
                raise
            # The peer closed an idle connection meanwhile: once more, on a new one.
            return self.request(url, method, target, headers, timeout)
        if response.will_close:
            conn.close()
        else:
            self._idle.setdefault(url, []).append(conn)
        return response.status, body

    def keep_only(self, urls: set[str]) -> None:
        for url in list(self._idle):
            if url not in urls:
                for conn in self._idle.pop(url):
                    conn.close()

    @staticmethod
    def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(url)
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)


def parse_queue_list(text: Any) -> list[str]:
    """servers.queues: a JSON array of queue names (anything else counts as none)."""
    try:
        queues = ujson.loads(text) if isinstance(text, str) and text else []
    except ValueError:
        return []
    return [name for name in queues if isinstance(name, str)] if isinstance(queues, list) else []

"""Database plumbing: a connection pool, transactions, retries with
backoff, translation of driver errors, and the one check every table name
passes before it is quoted into SQL.

Nothing outside this module, store.py and admin_store.py imports pymysql.

Why a small pool of our own instead of DBUtils: DBUtils guards its pool with
threading.Condition, which monkey-patching turns into a greenlet lock that
works but hides the hub from the pool; a LIFO queue plus a semaphore is
twenty lines, keeps warm connections at the front, and lets us ping only
connections that sat idle long enough to have been dropped.

The pool comes in two flavours that differ only in what they wait with
(`Waiting`): gevent's queue, semaphore and sleep for the executor's greenlets
(GREENLETS), the standard library's for geventq.Client in a program that is
not monkey-patched (THREADS): gevent's primitives belong to one thread's hub
and cannot be shared by plain threads.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
import gevent.lock
import gevent.queue
import pymysql
from loguru import logger
from pymysql.constants import CLIENT

from geventq.config import DatabaseConfig
from geventq.errors import (
    AccessDenied,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateKey,
    InvalidIdentifier,
    NoSuchColumn,
    NoSuchTable,
    RetryableConflict,
    TableProblem,
)
from geventq.logs import Throttle

T = TypeVar("T")

# Driver/server error codes meaning "the connection is gone or never came".
CONNECTION_ERRORS = {
    1040,
    1053,
    1077,
    1152,
    1158,
    1159,
    1160,
    1161,
    1047,  # Galera: "WSREP has not yet prepared node for application use" (not in the primary component)
    1927,
    2003,
    2006,
    2013,
    2014,
    2026,
    2055,
    4031,
}
# Lock wait timeout, deadlock, an error during COMMIT: rolled back, safe to
# rerun. On a Galera cluster a certification failure (another node committed
# a conflicting write first) is reported as a deadlock, often at COMMIT.
CONFLICT_ERRORS = {1180, 1205, 1213}
# What a task table can be wrong about: each its own named error.
TABLE_PROBLEMS = {
    1146: NoSuchTable,
    1049: NoSuchTable,
    1054: NoSuchColumn,
    1142: AccessDenied,
    1044: AccessDenied,
}
CONFLICT_RETRIES = 3
DUPLICATE_KEY = 1062

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
RESERVED_TABLES = {"queue_configs", "servers"}

# A connection idle longer than this is pinged before it is handed out, so a
# server restart or wait_timeout surfaces here instead of in the caller.
PING_AFTER_IDLE = 10.0


@dataclass(frozen=True)
class Waiting:
    """What a pool waits with: its idle queue (LIFO), its slot semaphore, its sleep."""

    queue: Callable[[], Any]
    semaphore: Callable[[int], Any]
    sleep: Callable[[float], None]


GREENLETS = Waiting(gevent.queue.LifoQueue, gevent.lock.BoundedSemaphore, gevent.sleep)
THREADS = Waiting(queue.LifoQueue, threading.BoundedSemaphore, time.sleep)


class Nodes:
    """The database nodes a process may use (`database.hosts`, else host and
    port) and the one it uses now, shared by the process's pools so that they
    move together.

    A connection that fails to open, or breaks, moves us to the next node,
    round robin, so a server whose node died carries on on the next one.
    When there are several nodes (a Galera cluster), each new connection first
    waits until its node has applied every write the cluster committed
    (wsrep_sync_wait): after a failover, a fenced outcome then sees the claim
    this server committed on the node that died."""

    def __init__(self, addresses: Sequence[tuple[str, int]]):
        if not addresses:
            raise ValueError("at least one database node")
        self.addresses = tuple(addresses)
        self._current = 0

    @property
    def current(self) -> str:
        return _label(*self.addresses[self._current])

    @property
    def cluster(self) -> bool:
        return len(self.addresses) > 1

    def open(
        self, connect_to: Callable[[str, int], pymysql.connections.Connection]
    ) -> pymysql.connections.Connection:
        """A connection to the node in use or, failing that, the next ones in turn."""
        start = self._current
        error: DatabaseUnavailable | None = None
        for step in range(len(self.addresses)):
            index = (start + step) % len(self.addresses)
            try:
                conn = connect_to(*self.addresses[index])
            except DatabaseUnavailable as failure:
                error = failure
                continue
            self._move(index, error)
            return conn
        assert error is not None
        raise error

    def broken(self, conn: pymysql.connections.Connection) -> None:
        """A connection to the node in use broke: the next connection tries the next node first."""
        if self.cluster and (conn.host, conn.port) == self.addresses[self._current]:
            self._move((self._current + 1) % len(self.addresses), "a connection broke")

    def _move(self, index: int, reason: Any) -> None:
        if index != self._current:
            before, self._current = self.current, index
            logger.warning("database node {} failed ({}); using {}", before, reason, self.current)


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class QuotedTable(str):
    """A table identifier that passed `quote_table`, backticks included."""


def check_table_name(name: Any) -> tuple[str, ...]:
    """The parts of `table` or `database.table`; raises InvalidIdentifier."""
    if not isinstance(name, str) or not name:
        raise InvalidIdentifier("table name must be a non-empty string")
    parts = tuple(name.split("."))
    if len(parts) > 2 or not all(IDENTIFIER.fullmatch(part) for part in parts):
        raise InvalidIdentifier(
            f"invalid table name {name[:80]!r}: expected `table` or `database.table`, "
            "each part a letter or underscore then up to 63 letters, digits or underscores"
        )
    if parts[-1].lower() in RESERVED_TABLES:
        raise InvalidIdentifier(f"{name!r} is one of geventq's own tables and cannot hold tasks")
    return parts


def quote_table(name: Any, registered: Collection[str] | None) -> QuotedTable:
    """Backtick-quote `name` after checking its shape and, unless `registered`
    is None (creating a queue's table), that it is a registered queue table."""
    parts = check_table_name(name)
    if registered is not None and name not in registered:
        raise InvalidIdentifier(f"table {name!r} is not the table of any queue in queue_configs")
    return QuotedTable(".".join(f"`{part}`" for part in parts))


def quote_database(name: str) -> str:
    if not IDENTIFIER.fullmatch(name or ""):
        raise InvalidIdentifier(f"invalid database name {name!r}")
    return f"`{name}`"


def translate(error: Exception) -> DatabaseError:
    """Map a PyMySQL exception to geventq's own types."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    reason = error.args[1] if len(error.args) > 1 else str(error)
    if code in CONFLICT_ERRORS:
        return RetryableConflict(f"({code}) {reason}")
    if code == DUPLICATE_KEY:
        return DuplicateKey(str(reason))
    if code in TABLE_PROBLEMS:
        return TABLE_PROBLEMS[code](f"({code}) {reason}")
    if code in CONNECTION_ERRORS or isinstance(error, (pymysql.err.InterfaceError, OSError)):
        return DatabaseUnavailable(f"({code}) {reason}" if code else str(reason or error))
    return DatabaseError(f"({code}) {reason}" if code else str(error))


DRIVER_ERRORS = (pymysql.err.Error, OSError)
Connection = pymysql.connections.Connection


class Database:
    """A pool of PyMySQL connections shared by the greenlets of one hub
    (`waiting=GREENLETS`, the default) or by the threads of a program that is
    not monkey-patched (`waiting=THREADS`)."""

    def __init__(
        self,
        config: DatabaseConfig,
        *,
        size: int | None = None,
        database: str | None = "",
        name: str = "db",
        autocommit: bool = True,
        idle_timeout: int | None = None,
        waiting: Waiting = GREENLETS,
        nodes: Nodes | None = None,
    ):
        self.config = config
        # Pass one Nodes to every pool of a process: they then fail over together.
        self.nodes = nodes or Nodes(config.nodes())
        self.name = name
        # The server closes a connection of this pool that says nothing for
        # this many seconds (wait_timeout), open transaction or not: a client
        # cut off by a partition cannot keep its row locks for hours.
        self.idle_timeout = idle_timeout
        # ...so a connection idle for half of that is pinged before it is handed out
        self._ping_after = PING_AFTER_IDLE if idle_timeout is None else min(PING_AFTER_IDLE, idle_timeout / 2)
        # autocommit=False saves the BEGIN round trip of every transaction
        # (the first statement opens one); such a pool only runs transactions.
        self.autocommit = autocommit
        self.database = config.database if database == "" else database
        self.size = size or config.pool_size
        self._idle = waiting.queue()
        self._slots = waiting.semaphore(self.size)
        self._sleep = waiting.sleep
        self._closed = False

    @property
    def address(self) -> str:
        """host:port of the database node in use."""
        return self.nodes.current

    def connect(self, read_timeout: float | None = None) -> pymysql.connections.Connection:
        """A new connection, outside the pool (the caller closes it), to the
        node in use or the next reachable one."""
        return self.nodes.open(lambda host, port: self._connect_to(host, port, read_timeout))

    def broken(self, conn: pymysql.connections.Connection) -> None:
        """Tell the nodes that a connection broke (the next connection may try another node)."""
        self.nodes.broken(conn)

    def _connect_to(self, host: str, port: int, read_timeout: float | None) -> pymysql.connections.Connection:
        cfg = self.config
        read_timeout = read_timeout or cfg.read_timeout
        try:
            conn = pymysql.connect(
                host=host,
                port=port,
                user=cfg.username,
                password=cfg.password,
                database=self.database,
                charset=cfg.charset,
                autocommit=self.autocommit,
                connect_timeout=cfg.connect_timeout,
                read_timeout=read_timeout,
                write_timeout=read_timeout,
                cursorclass=pymysql.cursors.DictCursor,
                # FOUND_ROWS: rowcount counts rows matched, not rows changed, so a
                # heartbeat that rewrites equal values still reports its row.
                client_flag=CLIENT.FOUND_ROWS,
                # Without this PyMySQL builds an SSL context for every
                # connection (about 28 ms of CPU on the hub) even with TLS off.
                ssl_disabled=True,
                # READ COMMITTED everywhere: claims lock only the rows they take,
                # and inserts racing claims do not deadlock on gap locks.
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            )
            try:
                with conn.cursor() as cur:
                    if self.idle_timeout is not None:
                        cur.execute("SET SESSION wait_timeout = %s", (self.idle_timeout,))
                    if self.nodes.cluster:
                        # Causality once per connection, not per statement (a
                        # round of group communication each): see Nodes.
                        cur.execute("SET STATEMENT wsrep_sync_wait = 1 FOR SELECT 1")
            except BaseException:
                _close_quietly(conn)
                raise
            return conn
        except DRIVER_ERRORS as error:
            raise translate(error) from error

    @contextmanager
    def connection(self) -> Iterator[pymysql.connections.Connection]:
        """A pooled connection; a broken one is closed instead of returned."""
        if self._closed:
            raise DatabaseUnavailable("the connection pool is closed")
        with self._slots:
            conn = self._take_idle() or self.connect()
            try:
                yield conn
            except DRIVER_ERRORS as error:
                translated = translate(error)
                if isinstance(translated, DatabaseUnavailable):
                    self.nodes.broken(conn)
                    _close_quietly(conn)
                else:
                    self._give_back(conn)
                raise translated from error
            except BaseException:
                # Interrupted mid-statement (timeout, kill): the protocol state is
                # unknown, so the connection cannot be reused.
                _close_quietly(conn)
                raise
            else:
                self._give_back(conn)

    @contextmanager
    def cursor(self) -> Iterator[pymysql.cursors.DictCursor]:
        """An autocommit cursor: each statement is its own transaction."""
        if not self.autocommit:
            with self.transaction() as cur:
                yield cur
            return
        with self.connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self, snapshot: bool = False) -> Iterator[pymysql.cursors.DictCursor]:
        """BEGIN, yield a cursor, COMMIT; ROLLBACK if the block raises.

        `snapshot`: a REPEATABLE READ transaction whose snapshot is taken at
        its start rather than at its first read (autocommit pools only)."""
        with self.connection() as conn:
            if snapshot:
                with conn.cursor() as cur:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            elif self.autocommit:
                conn.begin()
            try:
                with conn.cursor() as cur:
                    yield cur
                conn.commit()
            except BaseException:
                _rollback_quietly(conn)
                raise

    def call(self, fn: Callable[..., T], *args: Any, transaction: bool = False, snapshot: bool = False) -> T:
        """Run fn(cursor, *args) once, in a transaction (a snapshot one with
        `snapshot`, see transaction()) or in autocommit.

        If a pooled connection turns out dead (server restart, KILL), it runs
        once more on a new connection: a dead idle connection is not an outage.
        A deadlock or lock wait timeout is retried up to CONFLICT_RETRIES times.
        """

        def scope() -> Any:
            if snapshot:
                return self.transaction(snapshot=True)
            return self.transaction() if transaction else self.cursor()

        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                with scope() as cur:
                    return fn(cur, *args)
            except DatabaseUnavailable:
                if attempt or not self._discard_idle():
                    raise
            except RetryableConflict:
                # A deadlock rolled the whole transaction back, so running it
                # again is safe; they do happen between inserts and claims.
                if attempt == CONFLICT_RETRIES:
                    raise
                self._sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def retrying(
        self,
        fn: Callable[..., T],
        *args: Any,
        what: str,
        transaction: bool = False,
        attempts: int | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> T:
        """Run fn(cursor, *args), retrying with backoff while the database is away or a
        deadlock rolled the transaction back. Logs an outage at most once per
        ten seconds instead of once per attempt."""
        backoff, tries, outages = 0.05, 0, Throttle(10)
        while True:
            try:
                return self.call(fn, *args, transaction=transaction)
            except (DatabaseUnavailable, RetryableConflict) as error:
                tries += 1
                if attempts is not None and tries >= attempts:
                    raise
                if should_stop is not None and should_stop():
                    raise
                if isinstance(error, DatabaseUnavailable) and outages.ready():
                    logger.warning("{}: database {} unavailable ({}); retrying", what, self.address, error)
                self._sleep(backoff if isinstance(error, DatabaseUnavailable) else 0.01 * tries)
                backoff = min(backoff * 2, 2.0)

    def close(self) -> None:
        self._closed = True
        self._discard_idle()

    def _discard_idle(self) -> int:
        """Close every idle connection (they likely died together); how many."""
        closed = 0
        while True:
            try:
                _close_quietly(self._idle.get_nowait()[0])
                closed += 1
            except queue.Empty:  # gevent's queue raises it too
                return closed

    def _take_idle(self) -> pymysql.connections.Connection | None:
        while True:
            try:
                conn, idle_since = self._idle.get_nowait()
            except queue.Empty:  # gevent's queue raises it too
                return None
            if time.monotonic() - idle_since < self._ping_after:
                return conn
            try:
                conn.ping(reconnect=False)
                return conn
            except DRIVER_ERRORS:
                _close_quietly(conn)

    def _give_back(self, conn: pymysql.connections.Connection) -> None:
        if self._closed or not conn.open:
            _close_quietly(conn)
        else:
            self._idle.put((conn, time.monotonic()))


def wait_until_reachable(db: Database, deadline_seconds: float) -> None:
    """Block until a connection opens, or raise DatabaseUnavailable naming
    host:port and the driver's reason once `deadline_seconds` have passed."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            _close_quietly(db.connect())
            return
        except DatabaseUnavailable as error:
            if time.monotonic() + 1 > deadline:
                raise DatabaseUnavailable(f"cannot reach MySQL at {db.address}: {error}") from error
            gevent.sleep(1)


def _rollback_quietly(conn: pymysql.connections.Connection) -> None:
    try:
        conn.rollback()
    except DRIVER_ERRORS:
        _close_quietly(conn)


def _close_quietly(conn: pymysql.connections.Connection) -> None:
    try:
        conn.close()
    except DRIVER_ERRORS:
        pass


_DUPLICATE_KEY_NAME = re.compile(r"for key '(?:[^']*\.)?([^'.]+)'$")


def duplicate_key(error: Exception) -> str | None:
    """The name of the unique key a driver error broke, if it is a duplicate
    key error ("Duplicate entry 'x' for key 'uk_name'", MySQL 8 adds the table)."""
    code = error.args[0] if error.args and isinstance(error.args[0], int) else None
    if code != DUPLICATE_KEY or len(error.args) < 2:
        return None
    match = _DUPLICATE_KEY_NAME.search(str(error.args[1]))
    return match.group(1) if match else ""


def table_problem(error: Exception) -> TableProblem | None:
    """The named table problem a driver error (or its translation) is, if any."""
    translated = error if isinstance(error, DatabaseError) else translate(error)
    return translated if isinstance(translated, TableProblem) else None


@contextmanager
def missing_table_skipped() -> Iterator[None]:
    """Run the block on a task table named by a queue row, ledger or request,
    and skip it when the name is no valid identifier or the table is missing
    or malformed (a queue pointing at a dropped table is the operator's to
    mend: readers of many tables go on with the others). Other errors raise."""
    try:
        yield
    except InvalidIdentifier:
        pass
    except DRIVER_ERRORS as error:
        if table_problem(error) is None:
            raise

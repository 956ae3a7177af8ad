"""The one task type of the chaos soak and the fault tests: `chaos`, whose
params.kind picks a behaviour.

Every run is recorded in the test database's `executions` table, like the
behaviours in behaviours.py, but over a connection of its own straight to
MariaDB (CHAOS_RECORD_DB, default 127.0.0.1:3306), never through the
executor's pool: the executor reaches the database through a fault-injecting
proxy that a test may black-hole, while these records are the ground truth
the invariant checker reads. The finish is written in a `finally`, with how
the run ended (`ended`): ok, error, timeout (task_timeout fired), lease (the
server's heartbeat lease lapsed: LeaseLost), shutdown (stopped by SIGTERM
after shutdown_timeout), or the exception's name. So a handler that was
stopped still records when it really stopped; only a process that died
(SIGKILL, os._exit) leaves finished_at empty.

params: kind = fast | slow | fail | flaky | timeout | cpu | cpu_thread | exit,
seconds (slow, timeout, cpu, cpu_thread), gate (cpu: a file whose
appearance ends the block before `seconds`), succeed_on (flaky: the first
attempt, 1-based, that succeeds), exit_attempts (exit: os._exit on attempts
up to this one, default 1, then succeed).
"""

import os
import time
import uuid

import gevent
import pymysql
from gevent.lock import BoundedSemaphore

from geventq import task_handler
from geventq.errors import LeaseLost, TaskCancelled

_host, _, _port = os.environ.get("CHAOS_RECORD_DB", "127.0.0.1:3306").rpartition(":")
RECORD_DB = (_host or "127.0.0.1", int(_port))

# Idle direct connections, per database name; popped and pushed back by one
# greenlet at a time (no yield in between), so a plain list is enough. At most
# RECORD_CONNECTIONS per process: three executors running a hundred handlers
# each would otherwise exceed MariaDB's default max_connections (151).
RECORD_CONNECTIONS = 10
_idle: dict[str, list] = {}
_slots = BoundedSemaphore(RECORD_CONNECTIONS)


def _connect(database: str):
    host, port = RECORD_DB
    return pymysql.connect(
        host=host,
        port=port,
        user="root",
        password="",
        database=database,
        autocommit=True,
        connect_timeout=5,
        read_timeout=10,
        write_timeout=10,
    )


def _write(database: str, sql: str, args: tuple) -> None:
    """One statement on a direct connection; a connection interrupted
    mid-statement (a kill landed) is closed, never reused."""
    pool = _idle.setdefault(database, [])
    with _slots:
        conn = pool.pop() if pool else _connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
        except BaseException:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may raise anything
                pass
            raise
        pool.append(conn)


def _ended(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    if isinstance(error, gevent.Timeout):
        return "timeout"
    if isinstance(error, LeaseLost):
        return "lease"
    if isinstance(error, TaskCancelled):
        return "cancelled"
    if isinstance(error, gevent.GreenletExit):
        return "shutdown"
    if isinstance(error, RuntimeError):
        return "error"
    return type(error).__name__[:40]


# Both writes are upserts on run_id: a kill (task_timeout, lease, shutdown)
# can land while the start is still on its way, and then the finish may reach
# the table first. Such a run is recorded as having started when it finished:
# its handler had not begun.
START = (
    "INSERT INTO executions (table_name, task_id, retry_count, server_id, pid, run_id, claimed_at, "
    "started_at) VALUES (%s, %s, %s, %s, %s, %s, %s, NOW(6)) ON DUPLICATE KEY UPDATE started_at = started_at"
)
# A second stop landing while the first finish is being written (shutdown
# after a timeout) is written again on a fresh connection, and the server may
# still execute the interrupted first write after it. finish_order keeps the
# later stop: it is how the run really ended. (It is assigned last: MariaDB
# evaluates these assignments in order, so the IFs read the old value.)
# A finish that finds no start row inserts one with began = 0: the handler
# was stopped before its start was written, so it never behaved.
FINISH = (
    "INSERT INTO executions (table_name, task_id, retry_count, server_id, pid, run_id, started_at, "
    "finished_at, ended, finish_order, began) "
    "VALUES (%s, %s, %s, %s, %s, %s, NOW(6), NOW(6), %s, %s, 0) "
    "ON DUPLICATE KEY UPDATE "
    "finished_at = IF(VALUES(finish_order) >= finish_order, VALUES(finished_at), finished_at), "
    "ended = IF(VALUES(finish_order) >= finish_order, VALUES(ended), ended), "
    "finish_order = GREATEST(finish_order, VALUES(finish_order))"
)
FIRST_STOP, LATE_STOP = 1, 2


@task_handler("chaos")
def chaos(ctx):
    database = ctx.config.database.database
    run = (ctx.table_name, ctx.task_id, ctx.retry_count, ctx.server_id, os.getpid(), uuid.uuid4().hex)
    error = None
    try:
        _write(database, START, (*run, ctx.started_at))
        _behave(ctx)
    except BaseException as raised:
        error = raised
        raise
    finally:
        try:
            _record_finish(database, (*run, _ended(error), FIRST_STOP))
        except BaseException as late:
            # A second stop (shutdown after task_timeout, say) landed while the
            # first was being recorded: that one is how the run really ended.
            _record_finish(database, (*run, _ended(late), LATE_STOP))
            raise


def _record_finish(database: str, values: tuple) -> None:
    try:
        _write(database, FINISH, values)
    except Exception:  # noqa: BLE001 - once more on a fresh connection
        _write(database, FINISH, values)


def _behave(ctx) -> None:
    params = ctx.params
    kind = params.get("kind", "fast")
    seconds = float(params.get("seconds", 0))
    if kind == "fast":
        return
    if kind in ("slow", "timeout"):
        gevent.sleep(seconds)
    elif kind == "fail":
        raise RuntimeError("chaos: failing on purpose")
    elif kind == "flaky":
        if ctx.attempt < int(params.get("succeed_on", 2)):
            raise RuntimeError(f"chaos: flaky failure on attempt {ctx.attempt}")
    elif kind == "cpu":
        # Never yields: the hub is blocked for `seconds`, or (with params.gate)
        # until that file exists: then the test decides when the hub runs again.
        deadline = time.monotonic() + seconds
        gate = params.get("gate")
        while time.monotonic() < deadline and not (gate and os.path.exists(gate)):
            pass
    elif kind == "cpu_thread":
        ctx.run_in_thread(_spin, seconds)
    elif kind == "exit":
        if ctx.attempt <= int(params.get("exit_attempts", 1)):
            os._exit(int(params.get("code", 3)))
    else:
        raise RuntimeError(f"chaos: unknown kind {kind!r}")


def _spin(seconds: float) -> float:
    """CPU work for a native thread: it holds the GIL in slices, so the hub
    still gets its turns."""
    deadline = time.monotonic() + seconds
    total = 0.0
    while time.monotonic() < deadline:
        total += 1.0
    return total

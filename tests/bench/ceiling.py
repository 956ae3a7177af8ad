"""The ceiling: the least a gevent + PyMySQL process must do to run tasks
from a MySQL table, with no logging, no fencing, no heartbeat.

A pool of `concurrency` greenlets. One claimer takes up to the free slots in
one short READ COMMITTED transaction (SELECT … FOR UPDATE SKIP LOCKED with the
same WHERE/ORDER BY as geventq's claim, then UPDATE status = 1), and spawns
the handler (a no-op, or a sleep) for each row. Completion has two variants:

- batched:  when every task of a claimed batch has returned, one
            `UPDATE … SET status = 2 WHERE id IN (…)` marks the batch done;
- per-task: each task's greenlet marks its own row done with its own UPDATE
            before it frees its slot.

Run as `python -m tests.bench.ceiling …` (monkey-patched first, like the
executor); it prints one JSON line. The parent reads the figures from the
database, like every other workload.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

CLAIM = (
    "SELECT id, task_type, task_params, retry_count, max_retries, schedule_time, created_at "
    "FROM {table} WHERE status = 0 AND schedule_time <= NOW(3) AND task_type IN %s "
    "ORDER BY schedule_time, id LIMIT %s FOR UPDATE SKIP LOCKED"
)
MARK_RUNNING = "UPDATE {table} SET status = 1, server_id = 'ceiling', start_time = NOW(3) WHERE id IN %s"
MARK_DONE_BATCH = "UPDATE {table} SET status = 2, end_time = NOW(3) WHERE id IN %s"
MARK_DONE_ONE = "UPDATE {table} SET status = 2, end_time = NOW(3) WHERE id = %s"
TASK_TYPES = ("bench_noop", "bench_sleep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ceiling")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--database", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--mode", choices=["batched", "per-task"], default="batched")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each task sleeps (0: no-op)")
    parser.add_argument(
        "--handshake",
        action="store_true",
        help="print 'ready' once connected and wait for a line on stdin before the loop "
        "(so a profiler can attach after the set-up)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    # Imported here, after monkey-patching in main().
    import gevent
    import pymysql
    from gevent.pool import Pool
    from gevent.queue import Queue

    table = f"`{args.table}`"

    def connect():
        return pymysql.connect(
            host=args.host,
            port=args.port,
            user=args.user,
            password=args.password,
            database=args.database,
            autocommit=True,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )

    connections: Queue = Queue()
    for _ in range(args.concurrency if args.mode == "per-task" else 8):
        connections.put(connect())
    claim_conn = connect()
    if args.handshake:
        print("ready", flush=True)
        sys.stdin.readline()

    def write(sql: str, value) -> None:
        conn = connections.get()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.format(table=table), (value,))
        finally:
            connections.put(conn)

    def claim(limit: int) -> list[tuple]:
        claim_conn.begin()
        with claim_conn.cursor() as cur:
            cur.execute(CLAIM.format(table=table), (TASK_TYPES, limit))
            rows = cur.fetchall()
            if rows:
                cur.execute(MARK_RUNNING.format(table=table), (tuple(row[0] for row in rows),))
        claim_conn.commit()
        return rows

    def handler(row) -> None:
        if args.sleep:
            gevent.sleep(args.sleep)

    def run_then_mark(row) -> None:
        handler(row)
        write(MARK_DONE_ONE, row[0])

    def mark_batch_done(greenlets, ids) -> None:
        gevent.joinall(greenlets)
        write(MARK_DONE_BATCH, ids)

    import resource

    pool = Pool(args.concurrency)
    finishers = []
    claimed, claims, started = 0, 0, time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    while claimed < args.tasks:
        pool.wait_available()
        rows = claim(pool.free_count())
        claims += 1
        if not rows:
            gevent.sleep(0.001)
            continue
        claimed += len(rows)
        if args.mode == "per-task":
            for row in rows:
                pool.spawn(run_then_mark, row)
        else:
            greenlets = [pool.spawn(handler, row) for row in rows]
            finishers.append(gevent.spawn(mark_batch_done, greenlets, tuple(row[0] for row in rows)))
    pool.join()
    gevent.joinall(finishers)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "mode": args.mode,
        "tasks": claimed,
        "claims": claims,
        "mean_batch": claimed / max(claims, 1),
        "wall_s": time.monotonic() - started,
        "loop_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

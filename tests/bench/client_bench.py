"""W10: geventq.Client, from this (plain, unpatched) bench process.

- enqueue_many of 100,000 tasks against a ceiling measured in the same run:
  the same 100,000 Python dicts, serialised with ujson and inserted by a bare
  PyMySQL cursor as multi-row INSERTs of 10,000 rows in one transaction
  (no checks, no ids read back). Each side gets a fresh table; median of the
  runs; ratio = Client tasks/s ÷ ceiling tasks/s.
- enqueue latency: 1,000 single enqueues in a row, p50/p99 of the call.
- pickup: one Client.enqueue every 50 ms for 10 s into a queue an idle
  executor runs with scan_interval 5: start_time − created_at, p50/p95/p99
  (the Client's wake must make it start at once, like an admin task/create).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pymysql
import ujson

from geventq import Client
from tests.bench.benchdb import BenchDB, ident
from tests.bench.procs import executors, write_config

BATCH = 10_000


def w10(ctx: Any) -> dict[str, Any]:
    db = ctx.db
    tasks = ctx.sizes.w10_tasks
    payload = [{"task_type": "bench_noop", "params": {"user_id": n, "kind": "welcome"}} for n in range(tasks)]
    config = write_config(ctx.workdir("W10"), db)
    result: dict[str, Any] = {"tasks": tasks}
    db.add_queue("bench_w10", "bench_w10", max_workers=10, scan_interval=5, server_id="bench-w10")
    # Disabled while the inserts are measured: nothing claims meanwhile.
    db.execute("UPDATE queue_configs SET status = 0 WHERE queue_name = 'bench_w10'")
    with Client(config) as client:
        ceiling_runs, client_runs = [], []
        for _ in range(ctx.sizes.repeats):
            ceiling_runs.append(_ceiling_insert(db, payload))
            client_runs.append(_client_insert(db, client, payload))
        ceiling_s, client_s = statistics.median(ceiling_runs), statistics.median(client_runs)
        result["enqueue_many"] = {
            "ceiling_s": ceiling_s,
            "client_s": client_s,
            "ceiling_tasks_per_s": tasks / ceiling_s,
            "client_tasks_per_s": tasks / client_s,
            "ratio": ceiling_s / client_s,
            "runs_ceiling_s": ceiling_runs,
            "runs_client_s": client_runs,
        }
        ctx.progress(
            f"  enqueue_many {tasks:,}: client {tasks / client_s:,.0f}/s, ceiling {tasks / ceiling_s:,.0f}/s "
            f"(ratio {ceiling_s / client_s:.2f})"
        )
        result["enqueue"] = _enqueue_latency(db, client, ctx.sizes.w10_single)
        ctx.progress(
            f"  enqueue: p50 {result['enqueue']['p50_ms']:.2f} ms, p99 {result['enqueue']['p99_ms']:.2f} ms"
        )
        db.execute("TRUNCATE TABLE bench_w10")
        db.execute("UPDATE queue_configs SET status = 1 WHERE queue_name = 'bench_w10'")
        with executors(db, ctx.workdir("W10"), ["bench-w10"]) as procs:
            for proc in procs:
                proc.start()
                proc.wait_online()
            # Wakes go to the servers whose `servers.queues` lists the queue,
            # which a heartbeat writes a few seconds after the queue starts.
            deadline = time.monotonic() + 30
            while "bench_w10" not in (db.scalar("SELECT queues FROM servers") or ""):
                if time.monotonic() > deadline:
                    raise AssertionError("bench-w10 never listed its queue in the servers table")
                time.sleep(0.2)
            time.sleep(1.0)  # idle: its scans are done
            result["pickup"] = _pickup(ctx, db, client)
            result["exit_codes"] = {proc.server_id: proc.stop() for proc in procs}
    return result


def _fresh(db: BenchDB) -> None:
    db.execute("TRUNCATE TABLE bench_w10")


def _ceiling_insert(db: BenchDB, payload: list[dict[str, Any]]) -> float:
    """Serialise and insert with nothing in between: the least any producer must do."""
    _fresh(db)
    conn = db.connect(db.database)
    try:
        conn.autocommit(False)
        with conn.cursor(pymysql.cursors.Cursor) as cur:
            began = time.perf_counter()
            for start in range(0, len(payload), BATCH):
                rows = [
                    (task["task_type"], ujson.dumps(task["params"], ensure_ascii=False))
                    for task in payload[start : start + BATCH]
                ]
                values = ",".join(["(%s,%s)"] * len(rows))
                cur.execute(
                    f"INSERT INTO {ident('bench_w10')} (task_type, task_params) VALUES {values}",
                    [value for row in rows for value in row],
                )
            conn.commit()
            return time.perf_counter() - began
    finally:
        conn.close()


def _client_insert(db: BenchDB, client: Client, payload: list[dict[str, Any]]) -> float:
    _fresh(db)
    began = time.perf_counter()
    ids = client.enqueue_many("bench_w10", payload)
    elapsed = time.perf_counter() - began
    if len(ids) != len(payload) or db.scalar("SELECT COUNT(*) FROM bench_w10") != len(payload):
        raise AssertionError("enqueue_many did not write every task")
    return elapsed


def _enqueue_latency(db: BenchDB, client: Client, count: int) -> dict[str, Any]:
    _fresh(db)
    client.enqueue("bench_w10", "bench_noop")  # warm: the directory and a pooled connection
    times = []
    for n in range(count):
        began = time.perf_counter()
        client.enqueue("bench_w10", "bench_noop", {"n": n})
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return {"calls": count, "p50_ms": _rank(times, 50), "p99_ms": _rank(times, 99), "max_ms": times[-1]}


def _pickup(ctx: Any, db: BenchDB, client: Client) -> dict[str, Any]:
    count = int(ctx.sizes.w3_seconds / 0.05)
    ids = []
    began = time.monotonic()
    for n in range(count):
        pause = began + n * 0.05 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        ids.append(int(client.enqueue("bench_w10", "bench_noop")))
    deadline = time.monotonic() + 15
    while (
        db.scalar("SELECT COUNT(*) FROM bench_w10 WHERE start_time IS NULL") and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    rows = db.query(
        "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, start_time) / 1000 AS ms FROM bench_w10 "
        "WHERE start_time IS NOT NULL"
    )
    latencies = sorted(float(row["ms"]) for row in rows)
    figures = {
        "tasks": count,
        "never_picked_up": count - len(latencies),
        "p50_ms": _rank(latencies, 50),
        "p95_ms": _rank(latencies, 95),
        "p99_ms": _rank(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
    }
    ctx.progress(
        f"  pickup: p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms over {len(latencies)} tasks"
    )
    return figures


def _rank(ordered: list[float], q: float) -> float | None:
    """Nearest rank, as W3's percentiles."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]

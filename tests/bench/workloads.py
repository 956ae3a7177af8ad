"""The workloads of issue #4. Each takes a `Context` and returns a dict of
figures read from the database clock (start_time, end_time, created_at), or
raises `Unavailable` when it cannot run here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import profile
from tests.bench.benchdb import BenchDB, ident
from tests.bench.client_bench import w10
from tests.bench.galera_bench import w8
from tests.bench.operator_view import idle_load, w7
from tests.bench.procs import (
    REPO,
    Executor,
    Unavailable,
    count_job_logs,
    cpu_seconds,
    database_server_pid,
    executors,
)
from tests.bench.sqlcount import CountingProxy

# Statements that do a task's work; their sum over the tasks run is the
# "statements per task" figure. Questions (every statement a client sent,
# SET and SHOW included) is reported beside it.
WORK_COUNTERS = (
    "Com_select",
    "Com_update",
    "Com_insert",
    "Com_delete",
    "Com_commit",
    "Com_begin",
    "Com_rollback",
)
TASK_TYPES = ("bench_noop", "bench_sleep")


@dataclass(frozen=True)
class Sizes:
    w1_tasks: int = 10_000
    w2_tasks: int = 2_000
    w3_seconds: float = 10.0
    w4_finished: int = 1_000_000
    w5_tasks: int = 100_000
    w9_seconds: float = 30.0
    sleep: float = 0.2
    settle_s: float = 3.0  # pause before each workload
    repeats: int = 3  # runs of W1, W2, W4, W6, W10's inserts and of the ceiling loop; the median is reported
    w10_tasks: int = 100_000  # Client.enqueue_many against a raw multi-row INSERT
    w10_single: int = 1_000  # single Client.enqueue calls timed
    w11_cancels: int = 40  # running tasks cancelled one by one
    w7_finished: int = 10_000_000  # W7's finished rows (run only with --only W7)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            w1_tasks=2_000,
            w2_tasks=1_000,
            w3_seconds=3.0,
            w4_finished=100_000,
            w5_tasks=10_000,
            w9_seconds=6.0,
            settle_s=0.5,
            repeats=1,
            w10_tasks=10_000,
            w10_single=200,
            w11_cancels=10,
            w7_finished=1_000_000,
        )


@dataclass
class Context:
    db: BenchDB
    out: Path
    sizes: Sizes
    progress: Callable[[str], None]
    results: dict[str, Any]
    profile_dir: Path | None = None  # --profile: py-spy on every process the bench starts

    def workdir(self, name: str) -> Path:
        path = self.out / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# --- shared steps ---------------------------------------------------------------


def cpu_figures(
    tasks: int, own_cpu: float | None, server_pid: int | None, server_cpu_before: float | None, what: str
) -> dict[str, Any]:
    """CPU seconds per 1,000 tasks: ours, and the database server's over the
    same window (its figure includes any other client it served meanwhile)."""
    server_cpu = None
    if server_pid and server_cpu_before is not None:
        now = cpu_seconds(server_pid)
        server_cpu = None if now is None else now - server_cpu_before
    per_k = 1000 / tasks if tasks else 0
    return {
        "what": what,
        "process_cpu_s": own_cpu,
        "database_cpu_s": server_cpu,
        "process_cpu_ms_per_task": own_cpu * per_k if own_cpu is not None else None,
        "database_cpu_ms_per_task": server_cpu * per_k if server_cpu is not None else None,
    }


def drain_figures(db: BenchDB, table: str, min_id: int = 0) -> dict[str, Any]:
    """Counts and the drain window (first start to last end) of tasks with id > min_id."""
    row = db.query(
        "SELECT COUNT(*) AS tasks, SUM(status = 2) AS done, SUM(status = 3) AS failed, "
        "MIN(start_time) AS first_start, MAX(end_time) AS last_end, "
        "TIMESTAMPDIFF(MICROSECOND, MIN(start_time), MAX(end_time)) / 1e6 AS drain_s, "
        "COUNT(DISTINCT server_id) AS servers "
        f"FROM {ident(table)} WHERE id > %s",
        (min_id,),
    )[0]
    return {
        "tasks": int(row["tasks"]),
        "done": int(row["done"] or 0),
        "failed": int(row["failed"] or 0),
        "first_start": row["first_start"],
        "last_end": row["last_end"],
        "drain_s": float(row["drain_s"] or 0),
        "servers_that_ran": int(row["servers"]),
    }


def completion_timeline(db: BenchDB, table: str, min_id: int = 0, bucket_s: float = 0.5) -> list[int]:
    """Tasks finished in each `bucket_s` after the first start: shows warm-up and stalls."""
    rows = db.query(
        "SELECT FLOOR(TIMESTAMPDIFF(MICROSECOND, f.first_start, t.end_time) / %s) AS b, COUNT(*) AS n "
        f"FROM {ident(table)} AS t, (SELECT MIN(start_time) AS first_start FROM {ident(table)} "
        "WHERE id > %s) AS f WHERE t.id > %s AND t.end_time IS NOT NULL GROUP BY b ORDER BY b",
        (int(bucket_s * 1e6), min_id, min_id),
    )
    counts = {int(row["b"]): int(row["n"]) for row in rows}
    return [counts.get(b, 0) for b in range(max(counts) + 1)] if counts else []


def wait_drained(
    ctx: Context,
    table: str,
    total: int,
    procs: list[Executor],
    *,
    timeout: float,
    on_poll: Callable[[int], None] | None = None,
    interval: float = 0.2,
) -> None:
    """Poll until no task is pending or running; progress every ~5 s."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        left = ctx.db.unfinished(table)
        if on_poll is not None:
            on_poll(total - left)
        if left == 0:
            return
        for proc in procs:
            proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{left} of {total} tasks still unfinished after {timeout:g}s")
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            ctx.progress(f"  … {total - left:,} of {total:,} done")
        time.sleep(interval)


def seconds_between(db: BenchDB, earlier: Any, later: Any) -> float:
    return float(db.scalar("SELECT TIMESTAMPDIFF(MICROSECOND, %s, %s) / 1e6 AS s", (earlier, later)))


def statement_delta(
    before: dict[str, int], after: dict[str, int], bench_sent: Counter, tasks: int
) -> dict[str, Any]:
    """The server's counters over a run, less what the bench itself sent."""
    delta = {
        name: after[name] - before[name] - bench_sent.get(name, 0)
        for name in after
        if name.startswith(("Com_", "Questions", "Connections"))
    }
    work = sum(delta[name] for name in WORK_COUNTERS)
    return {
        "counted": "+".join(WORK_COUNTERS),
        "by_counter": delta,
        "bench_sent_subtracted": dict(bench_sent),
        "statements": work,
        "statements_per_task": work / tasks if tasks else None,
        "questions_per_task": delta["Questions"] / tasks if tasks else None,
        "per_task_by_counter": {name: delta[name] / tasks for name in WORK_COUNTERS} if tasks else {},
    }


def proxy_counts(counts: dict[str, int], tasks: int) -> dict[str, Any]:
    """Statements one process sent through the counting proxy, per task."""
    work = sum(counts.get(name, 0) for name in WORK_COUNTERS)
    return {
        "counted": "+".join(WORK_COUNTERS),
        "by_counter": counts,
        "statements": work,
        "statements_per_task": work / tasks if tasks else None,
        "questions_per_task": counts.get("Questions", 0) / tasks if tasks else None,
        "per_task_by_counter": {name: counts.get(name, 0) / tasks for name in WORK_COUNTERS},
    }


def isolated_count(ctx: Context, run: Callable[[CountingProxy], dict[str, Any]]) -> dict[str, Any]:
    """One more run with the process talking to MySQL through the counting
    proxy: its statements alone, whoever else uses the server. The proxy adds
    a hop, so that run's speed is not a figure (it is kept for reference)."""
    proxy = CountingProxy(ctx.db.server.host, ctx.db.server.port)
    try:
        proxied = run(proxy)
    finally:
        proxy.close()
    isolated = proxied["sql_isolated"]
    ctx.progress(
        f"  through the counting proxy: {isolated['statements_per_task']:.3f} statements/task "
        f"({isolated['by_counter']})"
    )
    return {"sql_isolated": isolated, "proxied_run_tasks_per_s": proxied["tasks_per_s"]}


def finish(ctx: Context, workdir: Path, procs: list[Executor]) -> dict[str, Any]:
    codes = {proc.server_id: proc.stop() for proc in procs}
    warnings = [line for proc in procs for line in proc.warnings()]
    result = {"exit_codes": codes, "job_logs": count_job_logs(workdir), "executor_warnings": warnings[:10]}
    profiles = {proc.server_id: proc.profile for proc in procs if proc.profile}
    if profiles:
        result["profile"] = profiles
    return result


# --- W1, W4, W6 (and W2 with sleeping tasks): drain a full table ------------------


def drain_run(
    ctx: Context,
    name: str,
    *,
    tasks: int,
    max_workers: int,
    servers: int = 1,
    task_type: str = "bench_noop",
    params: dict | None = None,
    prefill: int = 0,
    count_sql: bool = False,
    limits: dict[str, int] | None = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Set the table up once, then drain `tasks` due tasks `repeats` times with
    fresh executors; the figures are those of the median run (a run lasts a
    second or two, so one run is at the mercy of anything else on the machine)."""
    db, table = ctx.db, f"bench_{name.lower()}"
    db.reset_between_workloads()
    db.add_queue(f"bench_{name.lower()}", table, max_workers=max_workers, scan_interval=1, limits=limits)
    setup: dict[str, Any] = {
        "max_workers": max_workers,
        "executors": servers,
        "processes": processes,
        "limits": limits or {},
    }
    empty_table, empty_runs = f"{table}_empty", []
    if prefill:
        # The same drain on an empty table, alternating with the big one's
        # runs: the ratio compares runs minutes apart on the same machine
        # state, not this workload with W1 measured earlier in the run.
        db.add_queue(empty_table, empty_table, max_workers=max_workers, scan_interval=1, limits=limits)
        setup.update(prefill_finished(ctx, table, prefill))
    runs = []
    for index in range(ctx.sizes.repeats):
        if prefill:
            empty = _drain_once(
                ctx,
                f"{name}-empty",
                empty_table,
                index,
                tasks=tasks,
                servers=servers,
                task_type=task_type,
                params=params,
                count_sql=False,
            )
            empty_runs.append(empty["tasks_per_s"] or 0.0)
            ctx.progress(f"  empty table, run {index + 1}: {empty['tasks_per_s']:,.0f} tasks/s")
        run = _drain_once(
            ctx,
            name,
            table,
            index,
            tasks=tasks,
            servers=servers,
            task_type=task_type,
            params=params,
            count_sql=count_sql,
            explain=bool(prefill) and index == 0,
            processes=processes,
        )
        runs.append(run)
        ctx.progress(
            f"  run {index + 1}/{ctx.sizes.repeats}: {run['tasks_per_s']:,.0f} tasks/s, "
            f"drain {run['drain_s']:.2f}s"
        )
    ordered = sorted(runs, key=lambda run: run["tasks_per_s"] or 0)
    result = {**setup, **ordered[len(ordered) // 2]}
    if runs[0].get("explain"):
        result["explain"] = runs[0]["explain"]
    if count_sql:
        result.update(
            isolated_count(
                ctx,
                lambda proxy: _drain_once(
                    ctx,
                    name,
                    table,
                    ctx.sizes.repeats,
                    tasks=tasks,
                    servers=servers,
                    task_type=task_type,
                    params=params,
                    count_sql=False,
                    proxy=proxy,
                ),
            )
        )
    if empty_runs:
        result["empty_runs_tasks_per_s"] = empty_runs
        result["empty_tasks_per_s"] = sorted(empty_runs)[len(empty_runs) // 2]
    result["runs_tasks_per_s"] = [run["tasks_per_s"] for run in runs]
    result["runs_drain_s"] = [run["drain_s"] for run in runs]
    profiled = [run["profile"] for run in runs if run.get("profile")]
    if profiled:
        result["profile"] = profiled[0]
    return result


def prefill_finished(ctx: Context, table: str, rows: int) -> dict[str, Any]:
    """W4's million (W7's ten million) finished rows, settled before any timing."""
    db, began = ctx.db, time.monotonic()
    result: dict[str, Any] = {
        "prefill_method": db.insert_finished(table, rows),
        "prefill_rows": rows,
        "prefill_s": round(time.monotonic() - began, 2),
    }
    ctx.progress(f"  {rows:,} finished rows in {result['prefill_s']:.1f}s ({result['prefill_method']})")
    result.update(settle_after_load(db, table))
    ctx.progress(
        f"  settled in {result['settle_s']:.1f}s: statistics analyzed, the table's pages written back "
        f"({result['dirty_pages_after_settle']} dirty pages left in the pool), "
        f"purge history {result['history_list_after_settle']}"
    )
    return result


def settle_after_load(db: BenchDB, table: str, timeout: float = 60) -> dict[str, Any]:
    """What a bulk load leaves InnoDB doing, done before the runs are timed,
    so they measure a big table and not its aftermath:
    - ANALYZE TABLE: the load changed more than 10% of the table, so InnoDB
      would recalculate its statistics in the background (about 12,000
      page reads at ten million rows, seen in the first timed run);
    - FLUSH TABLES … FOR EXPORT writes the table's dirty pages back. Waiting
      for them to drain by themselves never ends on MariaDB 10.5+: below
      innodb_max_dirty_pages_pct the page cleaner leaves them (2,894 dirty
      pages unchanged for 60 s here), and the runs then evict them;
    - purge: the history list back near 0."""
    began = time.monotonic()
    db.query(f"ANALYZE TABLE {ident(table)}")
    db.execute(f"FLUSH TABLES {ident(table)} FOR EXPORT")
    db.execute("UNLOCK TABLES")
    while time.monotonic() - began < timeout:
        if db.global_status()["Innodb_history_list_length"] < 100:
            break
        time.sleep(0.5)
    status = db.global_status()
    return {
        "settle_s": time.monotonic() - began,
        "dirty_pages_after_settle": status["Innodb_buffer_pool_pages_dirty"],
        "history_list_after_settle": status["Innodb_history_list_length"],
    }


def _drain_once(
    ctx: Context,
    name: str,
    table: str,
    index: int,
    *,
    tasks: int,
    servers: int,
    task_type: str,
    params: dict | None,
    count_sql: bool,
    proxy: CountingProxy | None = None,
    explain: bool = False,
    processes: int = 1,
) -> dict[str, Any]:
    db, result = ctx.db, {}
    min_id = int(db.scalar(f"SELECT COALESCE(MAX(id), 0) AS m FROM {ident(table)}"))
    began = time.monotonic()
    db.insert_due(table, task_type, tasks, params)
    ctx.progress(f"  inserted {tasks:,} due {task_type} tasks in {time.monotonic() - began:.1f}s")
    if explain:
        # With the due tasks in place, as the executor's first claim sees the
        # table (the bench names its queues after their tables).
        result["explain"] = explain_claim(db, table, queue_name=table)
        ctx.progress(
            f"  EXPLAIN claim: key={result['explain']['key']} type={result['explain']['type']} "
            f"rows={result['explain']['rows']} extra={result['explain']['extra']}"
        )
    workdir = ctx.workdir(f"{name}/run{index + 1}" + ("-proxied" if proxy else ""))
    server_ids = [f"bench-{name.lower()}-{n + 1}" for n in range(servers)]
    # Only the first run is profiled: py-spy's files are named by server_id.
    with executors(
        db,
        workdir,
        server_ids,
        ctx.profile_dir if index == 0 else None,
        proxy.port if proxy else None,
        # W12: each "executor" is a supervisor of this many processes
        ("--processes", str(processes)) if processes > 1 else (),
    ) as procs:
        if proxy is not None:
            proxy.reset()
        if count_sql:
            result["other_clients_connected"] = db.other_clients()
            before = db.global_status()
            db.sent.clear()
        server_pid = database_server_pid()
        server_cpu = cpu_seconds(server_pid) if server_pid else None
        process_start = db.now()
        for proc in procs:
            proc.start()
        ctx.progress(f"  started {servers} executor(s) (pid {', '.join(str(p.pid) for p in procs)})")
        ctx.results.setdefault("_pids", {})[name] = [p.pid for p in procs]
        wait_drained(ctx, table, tasks, procs, timeout=max(120.0, tasks / 100))
        result["cpu"] = cpu_figures(
            tasks,
            sum(proc.cpu_s() or 0 for proc in procs),
            server_pid,
            server_cpu,
            "executor CPU over its whole life (start-up included)",
        )
        if count_sql:
            after = db.global_status()
            result["sql"] = statement_delta(before, after, Counter(db.sent), tasks)
        if proxy is not None:
            result["sql_isolated"] = proxy_counts(proxy.snapshot(), tasks)
        result.update(finish(ctx, workdir, procs))
    figures = drain_figures(db, table, min_id)
    result.update(figures)
    result["tasks_per_s"] = figures["tasks"] / figures["drain_s"] if figures["drain_s"] else None
    result["done_per_half_second"] = completion_timeline(db, table, min_id)
    result["whole_process_s"] = seconds_between(db, process_start, figures["last_end"])
    result["process_start_to_first_claim_s"] = seconds_between(db, process_start, figures["first_start"])
    if servers > 1 or processes > 1:
        rows = db.query(
            f"SELECT server_id, COUNT(*) AS n FROM {ident(table)} WHERE id > %s GROUP BY server_id", (min_id,)
        )
        result["tasks_by_server"] = {row["server_id"]: int(row["n"]) for row in rows}
    return result


def w1(ctx: Context) -> dict[str, Any]:
    """10,000 due no-op tasks, one server, max_workers 50; also the SQL counts."""
    return drain_run(ctx, "W1", tasks=ctx.sizes.w1_tasks, max_workers=50, count_sql=True)


def w2(ctx: Context) -> dict[str, Any]:
    """2,000 tasks sleeping 0.2 s at max_workers 200: efficiency = ideal / drain."""
    sizes = ctx.sizes
    result = drain_run(
        ctx,
        "W2",
        tasks=sizes.w2_tasks,
        max_workers=200,
        task_type="bench_sleep",
        params={"seconds": sizes.sleep},
    )
    result["ideal_s"] = sizes.w2_tasks * sizes.sleep / 200
    result["efficiency"] = result["ideal_s"] / result["drain_s"] if result["drain_s"] else None
    return result


def w4(ctx: Context) -> dict[str, Any]:
    """W1 on a table that also holds 1,000,000 finished tasks, against W1 on
    an empty table in alternating runs (and, for reference, W1 itself)."""
    result = drain_run(ctx, "W4", tasks=ctx.sizes.w1_tasks, max_workers=50, prefill=ctx.sizes.w4_finished)
    if result.get("empty_tasks_per_s") and result.get("tasks_per_s"):
        result["ratio_to_empty"] = result["tasks_per_s"] / result["empty_tasks_per_s"]
    w1_result = ctx.results.get("W1", {})
    if w1_result.get("tasks_per_s") and result.get("tasks_per_s"):
        result["ratio_to_w1"] = result["tasks_per_s"] / w1_result["tasks_per_s"]
    return result


def w6(ctx: Context) -> dict[str, Any]:
    """W1 with two executors on one open queue."""
    result = drain_run(ctx, "W6", tasks=ctx.sizes.w1_tasks, max_workers=50, servers=2)
    w1_result = ctx.results.get("W1", {})
    if w1_result.get("tasks_per_s") and result.get("tasks_per_s"):
        result["ratio_to_w1"] = result["tasks_per_s"] / w1_result["tasks_per_s"]
    return result


def explain_claim(db: BenchDB, table: str, queue_name: str, limit: int = 50) -> dict[str, Any]:
    """EXPLAIN the claim's SELECT, taken from store.claim_due_tasks_skip_locked
    itself (a recording cursor captures the statement), so it keeps its shape
    when the core changes."""
    from geventq import store
    from geventq.db import quote_table

    class RecordingCursor:
        def __init__(self):
            self.statements: list[tuple[str, Any]] = []

        def execute(self, sql: str, args: Any = None) -> int:
            self.statements.append((sql, args))
            return 0

        def fetchall(self) -> list:
            return []

    cursor = RecordingCursor()
    store.claim_due_tasks_skip_locked(
        cursor, quote_table(table, None), "bench-explain", TASK_TYPES, limit, queue_name
    )
    sql, args = cursor.statements[0]
    rows = db.query("EXPLAIN " + sql, args)
    first = rows[0]
    wanted = db.index_on(table, ["status", "schedule_time"])
    extra = first.get("Extra") or ""
    return {
        "key": first.get("key"),
        "type": first.get("type"),
        "rows": first.get("rows"),
        "extra": extra,
        "status_schedule_index": wanted,
        "uses_status_schedule_index": first.get("key") == wanted and "filesort" not in extra.lower(),
        "statement": " ".join(sql.split()),
    }


# --- W5: memory over 100,000 tasks ----------------------------------------------------


def w5(ctx: Context) -> dict[str, Any]:
    db, tasks = ctx.db, ctx.sizes.w5_tasks
    checkpoint = tasks // 10
    table = "bench_w5"
    db.reset_between_workloads()
    db.add_queue("bench_w5", table, max_workers=50, scan_interval=1)
    workdir = ctx.workdir("W5")
    result: dict[str, Any] = {"tasks": tasks, "checkpoint": checkpoint, "max_workers": 50}
    samples: list[tuple[int, float]] = []
    with executors(db, workdir, ["bench-w5-1"], ctx.profile_dir) as procs:
        proc = procs[0].start(profile_now=False)
        ctx.results.setdefault("_pids", {})["W5"] = [proc.pid]
        proc.wait_online()
        time.sleep(1.0)
        result["rss_start_mb"] = proc.rss_mb()
        proc.attach_profiler()  # steady state only: start-up is W1's profile
        cpu_start = proc.cpu_s()
        server_pid = database_server_pid()
        server_cpu = cpu_seconds(server_pid) if server_pid else None
        ctx.progress(f"  online, RSS {result['rss_start_mb']:.1f} MiB; inserting {tasks:,} tasks")
        db.insert_due(table, "bench_noop", tasks)

        def sample(done: int) -> None:
            rss = proc.rss_mb()
            samples.append((done, round(rss, 2)))
            if done >= checkpoint and "rss_checkpoint_mb" not in result:
                result["rss_checkpoint_mb"] = rss
                result["checkpoint_done"] = done

        wait_drained(ctx, table, tasks, procs, timeout=max(300.0, tasks / 50), on_poll=sample, interval=0.5)
        result["rss_end_mb"] = proc.rss_mb()
        result["cpu"] = cpu_figures(
            tasks,
            proc.cpu_s() - cpu_start,
            server_pid,
            server_cpu,
            "executor CPU from online to drained (steady state)",
        )
        result.update(finish(ctx, workdir, procs))
    result["rss_growth_mb"] = result["rss_end_mb"] - result["rss_checkpoint_mb"]
    result["rss_samples"] = samples
    figures = drain_figures(db, table)
    result.update(figures)
    result["tasks_per_s"] = figures["tasks"] / figures["drain_s"] if figures["drain_s"] else None
    return result


# --- W3: pickup latency -----------------------------------------------------------------


def w3(ctx: Context) -> dict[str, Any]:
    """One task every 50 ms for 10 s on an idle server, created (a) through the
    admin API of the server that runs the queue, (b) through another server's
    admin API, (c) by plain SQL with scan_interval 1, and with 0.1; then the
    statements/s of one server with ten idle queues at scan_interval 5 and 0.1."""
    db = ctx.db
    db.reset_between_workloads()
    # The API queue keeps the default scan_interval (5 s): a created task must
    # be picked up at once without waiting for a scan.
    db.add_queue("bench_w3_api", "bench_w3_api", max_workers=10, scan_interval=5, server_id="bench-a")
    db.add_queue("bench_w3_sql", "bench_w3_sql", max_workers=10, scan_interval=1, server_id="bench-a")
    db.add_queue("bench_w3_fast", "bench_w3_fast", max_workers=10, scan_interval=0.1, server_id="bench-a")
    workdir = ctx.workdir("W3")
    result: dict[str, Any] = {"interval_ms": 50, "seconds": ctx.sizes.w3_seconds}
    with executors(db, workdir, ["bench-a", "bench-b"]) as procs:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_online()
        time.sleep(1.5)  # idle: first scans done
        a, b = procs
        parts = {
            "a_api_local": lambda: _api_creator(a.admin_url, "bench_w3_api"),
            "b_api_remote": lambda: _api_creator(b.admin_url, "bench_w3_api"),
            "c_sql_insert": lambda: _sql_creator(db, "bench_w3_sql"),
            "c_sql_insert_fast": lambda: _sql_creator(db, "bench_w3_fast"),
        }
        tables = {"c_sql_insert": ("bench_w3_sql", 1), "c_sql_insert_fast": ("bench_w3_fast", 0.1)}
        for part, make_creator in parts.items():
            table, scan = tables.get(part, ("bench_w3_api", 5))
            try:
                result[part] = _latency_part(ctx, part, table, make_creator(), procs, scan)
            except Unavailable as reason:
                result[part] = {"status": "n/a", "reason": str(reason)}
                ctx.progress(f"  {part}: n/a ({reason})")
        result.update(finish(ctx, workdir, procs))
    result["idle_load"] = idle_load(ctx)
    return result


def _latency_part(
    ctx: Context,
    part: str,
    table: str,
    create: Callable[[], int],
    procs: list[Executor],
    scan_interval: float,
) -> dict[str, Any]:
    db, count = ctx.db, int(ctx.sizes.w3_seconds / 0.05)
    ids, request_ms = [], []
    began = time.monotonic()
    for n in range(count):
        pause = began + n * 0.05 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent = time.monotonic()
        ids.append(create())
        request_ms.append((time.monotonic() - sent) * 1000)
    deadline = time.monotonic() + scan_interval + 10
    placeholders = ",".join(["%s"] * len(ids))
    while True:
        waiting = int(
            db.scalar(
                f"SELECT COUNT(*) AS n FROM {ident(table)} WHERE id IN ({placeholders}) "
                "AND start_time IS NULL",
                ids,
            )
        )
        if waiting == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    rows = db.query(
        f"SELECT TIMESTAMPDIFF(MICROSECOND, created_at, start_time) / 1000 AS ms "
        f"FROM {ident(table)} WHERE id IN ({placeholders}) AND start_time IS NOT NULL",
        ids,
    )
    latencies = sorted(float(row["ms"]) for row in rows)
    figures = {
        "tasks": count,
        "picked_up": len(latencies),
        "never_picked_up": count - len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "create_request_p50_ms": percentile(sorted(request_ms), 50),
    }
    ctx.progress(
        f"  {part}: p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms over {len(latencies)} tasks"
    )
    return figures


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q% of values at or below it."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _api_creator(base_url: str, table: str) -> Callable[[], int]:
    url = f"{base_url}/admin/task/create?table={table}"
    body = json.dumps({"task_type": "bench_noop", "task_params": {}}).encode()

    def create() -> int:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise Unavailable(f"POST {url} failed: {error}") from error
        try:
            task_id = json.loads(raw)["data"]["id"]
        except (ValueError, KeyError, TypeError):
            task_id = None
        if status != 201 or not isinstance(task_id, int):
            text = raw[:120].decode(errors="replace")
            raise Unavailable(f"POST /admin/task/create answered {status}: {text}")
        return task_id

    return create


def _sql_creator(db: BenchDB, table: str) -> Callable[[], int]:
    def create() -> int:
        return db.insert(f"INSERT INTO {ident(table)} (task_type, task_params) VALUES ('bench_noop', '{{}}')")

    return create


# --- the ceiling loop -------------------------------------------------------------------


def ceiling(ctx: Context) -> dict[str, Any]:
    """The minimal gevent + PyMySQL loop: batched and per-task completion on
    W1's shape, and batched on W2's shape."""
    sizes = ctx.sizes
    result = {
        "batched": _median_of(ctx, lambda i: _ceiling_run(ctx, "batched", sizes.w1_tasks, 50, 0.0, i)),
        "per_task": _median_of(ctx, lambda i: _ceiling_run(ctx, "per-task", sizes.w1_tasks, 50, 0.0, i)),
        "batched_sleep": _median_of(
            ctx, lambda i: _ceiling_run(ctx, "batched", sizes.w2_tasks, 200, sizes.sleep, i)
        ),
    }
    result["batched"].update(
        isolated_count(
            ctx, lambda proxy: _ceiling_run(ctx, "batched", sizes.w1_tasks, 50, 0.0, sizes.repeats, proxy)
        )
    )
    sleep = result["batched_sleep"]
    sleep["ideal_s"] = sizes.w2_tasks * sizes.sleep / 200
    sleep["efficiency"] = sleep["ideal_s"] / sleep["drain_s"] if sleep["drain_s"] else None
    return result


def _median_of(ctx: Context, run: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """`repeats` runs; the one with the median tasks/s, with every run's figure."""
    runs = [run(index) for index in range(ctx.sizes.repeats)]
    ordered = sorted(runs, key=lambda result: result["tasks_per_s"] or 0)
    profiled = [result["profile"] for result in runs if result.get("profile")]
    chosen = {**ordered[len(ordered) // 2], "runs_tasks_per_s": [result["tasks_per_s"] for result in runs]}
    if profiled:
        chosen["profile"] = profiled[0]
    return chosen


def _ceiling_run(
    ctx: Context,
    mode: str,
    tasks: int,
    concurrency: int,
    sleep: float,
    index: int = 0,
    proxy: CountingProxy | None = None,
) -> dict[str, Any]:
    db, table = ctx.db, "bench_ceiling"
    db.reset_between_workloads()
    db.task_table(table)
    task_type = "bench_sleep" if sleep else "bench_noop"
    db.insert_due(table, task_type, tasks, {"seconds": sleep} if sleep else None)
    server = db.server
    server_pid = database_server_pid()
    before = db.global_status()
    db.sent.clear()
    label = f"{mode}{'-sleep' if sleep else ''}"
    loop_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bench.ceiling",
            "--host",
            "127.0.0.1" if proxy else server.host,
            "--port",
            str(proxy.port if proxy else server.port),
            "--user",
            server.user,
            "--password",
            server.password,
            "--database",
            db.database,
            "--table",
            table,
            "--tasks",
            str(tasks),
            "--concurrency",
            str(concurrency),
            "--mode",
            mode,
            "--sleep",
            str(sleep),
            "--handshake",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Connections are open once it says ready: the profile covers the loop only.
    ready = loop_process.stdout.readline().strip()
    if proxy is not None:
        proxy.reset()  # the loop's statements only, not its connection set-up
    server_cpu = cpu_seconds(server_pid) if server_pid else None
    profile_to = ctx.profile_dir / f"profile-ceiling-{label}.txt" if ctx.profile_dir and index == 0 else None
    profiler = profile.Profiler(loop_process.pid, profile_to) if profile_to and ready == "ready" else None
    stdout, stderr = loop_process.communicate("go\n", timeout=600)
    after = db.global_status()
    server_cpu_after = cpu_seconds(server_pid) if server_pid else None
    summary = profiler.finish() if profiler is not None else None
    if loop_process.returncode != 0:
        raise RuntimeError(f"ceiling loop failed ({loop_process.returncode}):\n{stderr[-2000:]}")
    loop = json.loads(stdout.strip().splitlines()[-1])
    figures = drain_figures(db, table)
    result = {
        "mode": mode,
        "concurrency": concurrency,
        "sleep_s": sleep,
        **loop,
        **figures,
        "tasks_per_s": figures["tasks"] / figures["drain_s"] if figures["drain_s"] else None,
        "sql": statement_delta(before, after, Counter(db.sent), tasks),
    }
    if proxy is not None:
        result["sql_isolated"] = proxy_counts(proxy.snapshot(), tasks)
    result["cpu"] = cpu_figures(tasks, loop["loop_cpu_s"], None, None, "ceiling loop CPU (set-up excluded)")
    if server_cpu is not None and server_cpu_after is not None:
        result["cpu"]["database_cpu_s"] = server_cpu_after - server_cpu
        result["cpu"]["database_cpu_ms_per_task"] = (server_cpu_after - server_cpu) * 1000 / tasks
    if summary is not None:
        result["profile"] = summary
    ctx.progress(
        f"  ceiling {label}: {result['tasks_per_s']:,.0f} tasks/s "
        f"(mean batch {loop['mean_batch']:.1f}, "
        f"{result['sql']['statements_per_task']:.3f} statements/task)"
    )
    return result


def w9(ctx: Context) -> dict[str, Any]:
    """Schedule fire latency: an every-second schedule fired by two idle
    servers (both race for each fire) for w9_seconds. Per fire, by the
    database clock: created_at of its task minus its fire time (the task
    exists), and start_time minus its fire time (it runs)."""
    db = ctx.db
    db.reset_between_workloads()
    db.execute("DELETE FROM schedules")
    db.execute("DELETE FROM schedule_fires")
    db.add_queue("bench_w9", "bench_w9", max_workers=10, scan_interval=5)
    workdir = ctx.workdir("W9")
    with executors(db, workdir, ["bench-a", "bench-b"], ctx.profile_dir) as procs:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_online()
        time.sleep(1.0)  # idle
        db.execute(
            "INSERT INTO schedules (name, queue_name, task_type, interval_seconds) "
            "VALUES ('bench_w9', 'bench_w9', 'bench_noop', 1)"
        )
        time.sleep(ctx.sizes.w9_seconds)
        db.execute("UPDATE schedules SET status = 0")
        time.sleep(1.5)  # the last fires' tasks start
        # fire_at is UTC; created_at and start_time are in the database's time zone
        rows = db.query(
            "SELECT TIMESTAMPDIFF(MICROSECOND, f.fire_at, t.created_at - INTERVAL z.o SECOND) / 1000 "
            "AS created_ms, "
            "TIMESTAMPDIFF(MICROSECOND, f.fire_at, t.start_time - INTERVAL z.o SECOND) / 1000 AS started_ms "
            "FROM schedule_fires f JOIN bench_w9 t ON t.id = f.task_id "
            "JOIN (SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) AS o) z "
            "WHERE f.outcome = 'enqueued'"
        )
        duplicates = int(db.scalar("SELECT COUNT(*) - COUNT(DISTINCT task_params) AS n FROM bench_w9"))
        result = finish(ctx, workdir, procs)
    created = sorted(float(row["created_ms"]) for row in rows)
    started = sorted(float(row["started_ms"]) for row in rows if row["started_ms"] is not None)
    figures = {
        "seconds": ctx.sizes.w9_seconds,
        "fires": len(created),
        "duplicate_tasks": duplicates,
        "created_p50_ms": percentile(created, 50),
        "created_p99_ms": percentile(created, 99),
        "created_max_ms": created[-1] if created else None,
        "started_p50_ms": percentile(started, 50),
        "started_p99_ms": percentile(started, 99),
        **result,
    }
    ctx.progress(
        f"  {len(created)} fires: task created p50 {figures['created_p50_ms']:.1f} ms, "
        f"p99 {figures['created_p99_ms']:.1f} ms, max {figures['created_max_ms']:.1f} ms after its fire; "
        f"started p50 {figures['started_p50_ms']:.1f} ms"
    )
    return figures


def w11(ctx: Context) -> dict[str, Any]:
    """Limits and cancellation. W1 again on queues whose limits never bind
    (global_max_workers 50 = the pool; rate_limit 10,000,000 per minute): what
    the locked claim (queue_state row lock, running count, rate slices) costs
    against W1's plain claim. Then cancel latency: 40 running tasks cancelled
    one at a time through the admin API, from the request (database clock) to
    the task's end_time (cancelled)."""
    result: dict[str, Any] = {}
    w1_rate = ctx.results.get("W1", {}).get("tasks_per_s")
    for part, limits in (
        ("global", {"global_max_workers": 50}),
        ("rate", {"rate_limit": 10_000_000, "rate_period": 60}),
    ):
        ctx.progress(f"  W11 {part}: W1 with {limits}")
        run = drain_run(ctx, f"W11{part}", tasks=ctx.sizes.w1_tasks, max_workers=50, limits=limits)
        if w1_rate and run.get("tasks_per_s"):
            run["ratio_to_w1"] = run["tasks_per_s"] / w1_rate
        result[part] = run
    result["cancel"] = _cancel_latency(ctx, count=ctx.sizes.w11_cancels)
    return result


def _cancel_latency(ctx: Context, count: int) -> dict[str, Any]:
    db, table = ctx.db, "bench_w11cancel"
    db.reset_between_workloads()
    db.add_queue("bench_w11cancel", table, max_workers=count, scan_interval=1)
    workdir = ctx.workdir("W11/cancel")
    latencies = []
    with executors(db, workdir, ["bench-w11"], ctx.profile_dir) as procs:
        for proc in procs:
            proc.start()
        procs[0].wait_online()
        db.insert_due(table, "bench_sleep", count, {"seconds": 600})
        deadline = time.monotonic() + 30
        while db.scalar(f"SELECT COUNT(*) FROM {ident(table)} WHERE status = 1") < count:
            if time.monotonic() > deadline:
                raise RuntimeError("W11: the tasks to cancel did not all start")
            time.sleep(0.05)
        for row in db.query(f"SELECT id FROM {ident(table)} ORDER BY id"):
            asked = db.scalar("SELECT NOW(6)")
            _post(f"{procs[0].admin_url}/admin/task/cancel?table={table}&id={row['id']}")
            while (
                ended := db.scalar(
                    f"SELECT end_time FROM {ident(table)} WHERE id = %s AND status = 4", (row["id"],)
                )
            ) is None:
                time.sleep(0.002)
            latencies.append((ended - asked).total_seconds() * 1000)
        result = finish(ctx, workdir, procs)
    latencies.sort()
    figures = {
        "cancels": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        **result,
    }
    ctx.progress(
        f"  cancel latency over {len(latencies)} running tasks: p50 {figures['p50_ms']:.1f} ms, "
        f"p99 {figures['p99_ms']:.1f} ms, max {figures['max_ms']:.1f} ms"
    )
    return figures


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


def w12(ctx: Context) -> dict[str, Any]:
    """`run --processes 2` against one process: CPU-bound tasks (about 2 ms
    of pure Python each) with 1 and 2 processes, and W1's no-op tasks with 2."""
    from tests.bench.processes_bench import w12 as run  # it builds on this module

    return run(ctx)


WORKLOADS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "ceiling": ceiling,
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W8": w8,
    "W7": w7,
    "W9": w9,
    "W10": w10,
    "W11": w11,
    "W12": w12,
}

"""W7, the operator's view at ten million finished rows, and the idle cost
of a short scan_interval (measured with W3).

W7 loads 10,000,000 finished rows into one task table (INSERT … SELECT from
the sequence engine), plus 20,000 pending tasks due in an hour, then times
every admin endpoint a dashboard or an operator uses, measures MariaDB's CPU
per dashboard refresh, and drains W1's 10,000 tasks on that table and on an
empty one, alternately, for the claim's ratio. It takes minutes, so it runs
only when asked for (`--only W7`)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from tests.bench.benchdb import ident
from tests.bench.procs import cpu_seconds, database_server_pid, executors
from tests.bench.sqlcount import CountingProxy

W7_PENDING = 20_000
ENDPOINT_CALLS = 100
REFRESHES = 30
DASHBOARD_EVERY_S = 3.0
# Alternating drains of the big and the empty table: one run moves by ±10%
# on a shared 2-core machine, so the ratio is of medians over five each.
W7_CLAIM_REPEATS = 5


def w7(ctx: Any) -> dict[str, Any]:
    from tests.bench.workloads import _drain_once, percentile, prefill_finished

    db, table = ctx.db, "bench_w7"
    finished = ctx.sizes.w7_finished
    db.reset_between_workloads()
    db.add_queue("bench_w7", table, max_workers=50, scan_interval=1)
    db.add_queue("bench_w7_empty", "bench_w7_empty", max_workers=50, scan_interval=1)
    result: dict[str, Any] = prefill_finished(ctx, table, finished)
    runs: dict[str, list[float]] = {"big": [], "empty": []}
    for index in range(max(ctx.sizes.repeats, W7_CLAIM_REPEATS)):
        for which, name in (("empty", "bench_w7_empty"), ("big", table)):
            run = _drain_once(
                ctx,
                f"W7-{which}",
                name,
                index,
                tasks=ctx.sizes.w1_tasks,
                servers=1,
                task_type="bench_noop",
                params=None,
                count_sql=False,
            )
            runs[which].append(run["tasks_per_s"] or 0.0)
            ctx.progress(f"  W1 on the {which} table, run {index + 1}: {run['tasks_per_s']:,.0f} tasks/s")
    median = {which: sorted(rates)[len(rates) // 2] for which, rates in runs.items()}
    result.update(
        finished_rows=finished,
        pending_rows=W7_PENDING,
        claim_runs_tasks_per_s=runs,
        claim_big_tasks_per_s=median["big"],
        claim_empty_tasks_per_s=median["empty"],
        claim_ratio=median["big"] / median["empty"] if median["empty"] else None,
    )
    # The future pending tasks after the drains, which wait for status 0 and 1 to empty.
    db.execute(
        f"INSERT INTO {ident(table)} (task_type, task_params, schedule_time) "
        f"SELECT 'bench_noop', '{{}}', NOW(3) + INTERVAL 1 HOUR FROM seq_1_to_{W7_PENDING}"
    )
    result["explain"] = explain_operator_view(db, table)
    with executors(db, ctx.workdir("W7/admin"), ["bench-w7-admin"]) as procs:
        proc = procs[0].start()
        proc.wait_online()
        base = proc.admin_url
        last_id = int(db.scalar(f"SELECT MAX(id) AS m FROM {ident(table)}"))
        deep = -(last_id // 10)  # a page nine tenths of the way down
        endpoints = {
            "queue_list": "/admin/queue/list",
            "throughput": "/admin/queue/throughput?minutes=30",
            "task_list_first": f"/admin/task/list?table={table}&limit=50",
            "task_list_deep": f"/admin/task/list?table={table}&limit=50&offset={deep}",
            "task_list_done_deep": f"/admin/task/list?table={table}&limit=50&status=2&offset={deep}",
            "task_get": f"/admin/task/get?table={table}&id={last_id // 2}",
            "metrics": "/metrics",
        }
        latency: dict[str, Any] = {}
        for name, path in endpoints.items():
            times = sorted(_timed_get(base + path) for _ in range(ENDPOINT_CALLS))
            latency[name] = {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}
            ctx.progress(
                f"  {name}: p50 {latency[name]['p50_ms']:.1f} ms, p99 {latency[name]['p99_ms']:.1f} ms"
            )
        result["latency"] = latency
        result["dashboard"] = dashboard_cost(base, table)
        ctx.progress(
            f"  dashboard refresh: {result['dashboard']['db_cpu_ms_per_refresh']:.1f} ms of MariaDB CPU, "
            f"{result['dashboard']['db_core_share_every_3s']:.2%} of a core at one refresh every 3 s"
        )
    return result


def _timed_get(url: str) -> float:
    began = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status}")
    return (time.monotonic() - began) * 1000


def dashboard_cost(base: str, table: str) -> dict[str, Any]:
    """MariaDB's CPU for what one open dashboard asks every 3 s (its
    refreshAll: queues, servers, two throughput windows, schedules and the
    first task page), over REFRESHES refreshes back to back."""
    paths = [
        "/admin/queue/list",
        "/admin/server/list",
        "/admin/queue/throughput?minutes=30",
        "/admin/queue/throughput?minutes=5",
        "/admin/schedule/list",
        f"/admin/task/list?table={table}&limit=20",
    ]
    pid = database_server_pid()
    if pid is None:
        return {"status": "n/a", "reason": "no local mariadbd"}
    before, began = cpu_seconds(pid) or 0.0, time.monotonic()
    for _ in range(REFRESHES):
        for path in paths:
            _timed_get(base + path)
    per_refresh = ((cpu_seconds(pid) or 0.0) - before) / REFRESHES
    return {
        "refreshes": REFRESHES,
        "requests_per_refresh": len(paths),
        "wall_ms_per_refresh": (time.monotonic() - began) * 1000 / REFRESHES,
        "db_cpu_ms_per_refresh": per_refresh * 1000,
        "db_core_share_every_3s": per_refresh / DASHBOARD_EVERY_S,
        "note": "mariadbd utime+stime delta; other clients of the server count too",
    }


def explain_operator_view(db: Any, table: str) -> dict[str, Any]:
    """EXPLAIN of the operator view's statements on the big table."""
    statements = {
        "active_counts": f"SELECT status, COUNT(*) FROM {ident(table)} "
        "WHERE status IN (0, 1) GROUP BY status",
        "task_list_deep": f"SELECT * FROM {ident(table)} WHERE id < 100000 ORDER BY id DESC LIMIT 51",
        "due_pending": f"SELECT COUNT(*) FROM {ident(table)} WHERE status = 0 AND schedule_time <= NOW(3)",
    }
    plans = {}
    for name, sql in statements.items():
        row = db.query("EXPLAIN " + sql)[0]
        plans[name] = {key: row.get(key) for key in ("type", "key", "rows", "Extra")}
    return plans


def idle_load(ctx: Any, queues: int = 10, seconds: float = 5.0) -> dict[str, Any]:
    """Statements per second one executor sends with `queues` idle queues,
    at scan_interval 0.1 and at the default 5, counted by the proxy (its
    statements alone, whoever else uses the server)."""
    db, result = ctx.db, {"queues": queues, "seconds": seconds}
    for scan in (5, 0.1):
        db.reset_between_workloads()
        for n in range(queues):
            db.add_queue(f"bench_idle_{n}", f"bench_idle_{n}", max_workers=10, scan_interval=scan)
        proxy = CountingProxy(db.server.host, db.server.port)
        try:
            with executors(db, ctx.workdir(f"idle-{scan}"), ["bench-idle"], None, proxy.port) as procs:
                procs[0].start().wait_online()
                time.sleep(2.0)  # first scans done
                proxy.reset()
                time.sleep(seconds)
                counts = proxy.snapshot()
        finally:
            proxy.close()
        result[f"scan_{scan}"] = {
            "statements_per_s": counts.get("Questions", 0) / seconds,
            "by_counter_per_s": {name: round(n / seconds, 1) for name, n in counts.items() if n},
        }
        ctx.progress(
            f"  idle, {queues} queues at scan_interval {scan}: "
            f"{result[f'scan_{scan}']['statements_per_s']:.1f} statements/s"
        )
    return result


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)

"""W12: one host's cores with `geventq run --processes N`.

A gevent process runs on one core: CPU-bound handlers (W12's tasks do about
2 ms of pure Python each, never yielding) go as fast as one core allows. The
same tasks with `--processes 2` should go nearly twice as fast on two cores,
and W1's no-op tasks should lose nothing to the supervisor. Every run drains
a full table, repeated and reported by its median, like W1."""

from __future__ import annotations

from typing import Any

from tests.bench.workloads import Context, drain_run

CPU_TASK_STEPS = 60_000  # bench_cpu loop steps: about 2 ms here
SPEEDUP_TARGET = 1.6


def w12(ctx: Context) -> dict[str, Any]:
    tasks = ctx.sizes.w1_tasks // 3  # about 7 s of CPU at one process
    cpu = {"task_type": "bench_cpu", "params": {"n": CPU_TASK_STEPS}, "tasks": tasks, "max_workers": 50}
    one = drain_run(ctx, "W12_cpu_1p", **cpu)
    two = drain_run(ctx, "W12_cpu_2p", processes=2, **cpu)
    noop = drain_run(ctx, "W12_noop_2p", tasks=ctx.sizes.w1_tasks, max_workers=50, processes=2)
    result: dict[str, Any] = {"cpu_1_process": one, "cpu_2_processes": two, "noop_2_processes": noop}
    if one.get("tasks_per_s") and two.get("tasks_per_s"):
        result["cpu_speedup"] = two["tasks_per_s"] / one["tasks_per_s"]
        result["cpu_ms_per_task_1_process"] = 1000 / one["tasks_per_s"]
    w1_rate = ctx.results.get("W1", {}).get("tasks_per_s")
    if w1_rate and noop.get("tasks_per_s"):
        result["noop_ratio_to_w1"] = noop["tasks_per_s"] / w1_rate
    ctx.progress(
        f"  W12: CPU-bound {one.get('tasks_per_s') or 0:,.0f} → {two.get('tasks_per_s') or 0:,.0f} tasks/s "
        f"({result.get('cpu_speedup') or 0:.2f}×), no-op with 2 processes "
        f"{noop.get('tasks_per_s') or 0:,.0f} tasks/s"
    )
    return result

"""The benchmark's outputs: one table on stdout, results.json, chart.png.

Every figure with a target is checked here, so the table, the JSON and the
chart agree on what was met."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

W1_SHARE_OF_CEILING = 0.50
W2_EFFICIENCY = 0.95
W3_API_P99_MS = 50.0
W3_SQL_SLACK_MS = 50.0
W4_RATIO = 0.90
W3C_FAST_P99_MS = 150.0
W7_P99_MS = 50.0
W7_DASHBOARD_SHARE = 0.05
W5_GROWTH_MB = 20.0
STATEMENTS_PER_TASK = 0.25
W9_CREATED_MS = 1000.0  # issue 10: a task exists within 1 s of its fire time
W10_ENQUEUE_MANY_RATIO = 0.80
W10_PICKUP_P99_MS = 50.0
W11_RATIO = 0.80  # issue 11: a limit that never binds keeps >= 0.8 of W1
W11_CANCEL_P99_MS = 1000.0  # DESIGN: a running task stops within about a second
W12_CPU_SPEEDUP = 1.6  # issue 13: CPU-bound tasks, 2 processes against 1, on 2 cores


@dataclass
class Row:
    workload: str
    figure: str
    value: str
    ratio: str = ""  # to the batched ceiling (or the ceiling's own figure of that kind)
    target: str = ""
    verdict: str = ""  # met | MISSED | n/a | ""


def get(results: dict, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def one_line(text: str, limit: int = 90) -> str:
    """The first line of a reason, cut to fit a table cell."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _num(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else ""


def _cpu(results: dict, *path: str) -> str:
    cpu = get(results, *path, "cpu") or {}
    own, database = cpu.get("process_cpu_ms_per_task"), cpu.get("database_cpu_ms_per_task")
    return f"{_num(own, '.3f')} + {_num(database, '.3f')}"


CPU_FIGURE = "CPU ms/task: process + MariaDB"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _at_least(value: float | None, minimum: float) -> str:
    return _verdict(None if value is None else value >= minimum)


def _at_most(value: float | None, maximum: float) -> str:
    return _verdict(None if value is None else value <= maximum)


def _unavailable(results: dict, workload: str) -> str | None:
    entry = results.get(workload)
    if isinstance(entry, dict) and entry.get("status") in ("n/a", "error"):
        return f"{entry['status']} ({one_line(entry.get('reason', ''))})"
    return None


def build_rows(results: dict) -> list[Row]:
    rows: list[Row] = []
    ceiling = get(results, "ceiling", "batched", "tasks_per_s")
    rows += _ceiling_rows(results, ceiling)
    rows += _w1_rows(results, ceiling)
    rows += _w2_rows(results)
    rows += _w3_rows(results)
    rows += _w4_rows(results, ceiling)
    rows += _w5_rows(results, ceiling)
    rows += _w6_rows(results, ceiling)
    rows += _w9_rows(results)
    rows += _w10_rows(results)
    rows += _w11_rows(results, ceiling)
    if "W7" in results:
        rows += _w7_rows(results)
    rows += _w12_rows(results, ceiling)
    return rows


def _skipped(results: dict, workload: str, label: str) -> list[Row]:
    reason = _unavailable(results, workload)
    if reason is not None:
        return [Row(label, "", reason, verdict="n/a")]
    if workload not in results:
        return [Row(label, "", "not run")]
    return []


def _ceiling_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "ceiling", "ceiling")
    if skipped:
        return skipped
    return [
        Row("ceiling, batched", "tasks/s", _num(ceiling), "1.00"),
        Row(
            "ceiling, per-task UPDATE",
            "tasks/s",
            _num(get(results, "ceiling", "per_task", "tasks_per_s")),
            _ratio(get(results, "ceiling", "per_task", "tasks_per_s"), ceiling),
        ),
        Row("ceiling, batched", CPU_FIGURE, _cpu(results, "ceiling", "batched")),
        Row("ceiling, per-task UPDATE", CPU_FIGURE, _cpu(results, "ceiling", "per_task")),
        Row(
            "ceiling, batched",
            "SQL statements/task (counting proxy)",
            _num(get(results, "ceiling", "batched", "sql_isolated", "statements_per_task"), ".3f"),
        ),
        Row(
            "ceiling, batched, 0.2 s sleeps",
            "efficiency",
            _num(get(results, "ceiling", "batched_sleep", "efficiency"), ".3f"),
        ),
    ]


def _w1_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W1", "W1 no-op")
    if skipped:
        return skipped
    rate = get(results, "W1", "tasks_per_s")
    share = rate / ceiling if rate and ceiling else None
    # The proxy's count is the executor's alone; the global counters also see
    # every other client of the server, so they are the fallback.
    source = "sql_isolated" if get(results, "W1", "sql_isolated") else "sql"
    per_task = get(results, "W1", source, "statements_per_task")
    ceiling_per_task = get(results, "ceiling", "batched", source, "statements_per_task")
    how = "counting proxy" if source == "sql_isolated" else "SHOW GLOBAL STATUS"
    return [
        Row(
            "W1 no-op",
            "tasks/s",
            _num(rate),
            _ratio(rate, ceiling),
            f"≥ {W1_SHARE_OF_CEILING:.2f} × ceiling",
            _at_least(share, W1_SHARE_OF_CEILING),
        ),
        Row("W1 no-op", "whole process, s", _num(get(results, "W1", "whole_process_s"), ".2f")),
        Row("W1 no-op", CPU_FIGURE + " (start-up incl.)", _cpu(results, "W1")),
        _job_log_row(results, "W1"),
        Row(
            "W1 SQL",
            f"statements/task ({how})",
            _num(per_task, ".3f"),
            _ratio(per_task, ceiling_per_task),
            f"≤ {STATEMENTS_PER_TASK}",
            _at_most(per_task, STATEMENTS_PER_TASK),
        ),
        Row(
            "W1 SQL",
            "statements/task (SHOW GLOBAL STATUS, "
            f"{_num(get(results, 'W1', 'other_clients_connected'))} other clients)",
            _num(get(results, "W1", "sql", "statements_per_task"), ".3f"),
            _ratio(
                get(results, "W1", "sql", "statements_per_task"),
                get(results, "ceiling", "batched", "sql", "statements_per_task"),
            ),
        ),
    ]


def _job_log_row(results: dict, workload: str) -> Row:
    """A correctness check: every run leaves its job log file once the executor has stopped."""
    written, tasks = get(results, workload, "job_logs"), get(results, workload, "tasks")
    ok = None if written is None or tasks is None else written >= tasks
    return Row(
        workload,
        "job log files after SIGTERM",
        f"{_num(written)} of {_num(tasks)}",
        target="one per task",
        verdict=_verdict(ok),
    )


def _w2_rows(results: dict) -> list[Row]:
    skipped = _skipped(results, "W2", "W2 I/O-bound")
    if skipped:
        return skipped
    efficiency = get(results, "W2", "efficiency")
    return [
        Row(
            "W2 I/O-bound",
            f"efficiency ({_num(get(results, 'W2', 'drain_s'), '.2f')} s drain)",
            _num(efficiency, ".3f"),
            _ratio(efficiency, get(results, "ceiling", "batched_sleep", "efficiency")),
            f"≥ {W2_EFFICIENCY}",
            _at_least(efficiency, W2_EFFICIENCY),
        )
    ]


def _w3_rows(results: dict) -> list[Row]:
    skipped = _skipped(results, "W3", "W3 pickup")
    if skipped:
        return skipped
    rows = []
    for part, label, limit in (
        ("a_api_local", "W3a API, same server", W3_API_P99_MS),
        ("b_api_remote", "W3b API, other server", W3_API_P99_MS),
        ("c_sql_insert", "W3c SQL insert, scan 1 s", 1000 + W3_SQL_SLACK_MS),
        ("c_sql_insert_fast", "W3c SQL insert, scan 0.1 s", W3C_FAST_P99_MS),
    ):
        entry = get(results, "W3", part) or {}
        if entry.get("status") == "n/a":
            rows.append(
                Row(
                    label,
                    "p50/p95/p99 ms",
                    f"n/a ({one_line(entry.get('reason', ''), 70)})",
                    target=f"p99 ≤ {limit:g} ms",
                    verdict="n/a",
                )
            )
            continue
        p99 = entry.get("p99_ms")
        value = "/".join(_num(entry.get(k), ".1f") for k in ("p50_ms", "p95_ms", "p99_ms"))
        if entry.get("never_picked_up"):
            value += f" ({entry['never_picked_up']} never ran)"
        met = None if p99 is None else p99 <= limit and not entry.get("never_picked_up")
        rows.append(Row(label, "p50/p95/p99 ms", value, target=f"p99 ≤ {limit:g} ms", verdict=_verdict(met)))
    idle = get(results, "W3", "idle_load") or {}
    for scan in ("5", "0.1"):
        rate = get(idle, f"scan_{scan}", "statements_per_s")
        if rate is not None:
            rows.append(
                Row(
                    "W3 idle load",
                    f"statements/s, {idle['queues']} idle queues, scan {scan} s",
                    _num(rate, ".1f"),
                )
            )
    return rows


def _w7_rows(results: dict) -> list[Row]:
    skipped = _skipped(results, "W7", "W7 operator view")
    if skipped:
        return skipped
    rows = []
    rows_label = f"{_num(get(results, 'W7', 'finished_rows'))} finished rows"
    for name, entry in (get(results, "W7", "latency") or {}).items():
        p99 = entry.get("p99_ms")
        rows.append(
            Row(
                "W7 operator view",
                f"{name} p50/p99 ms ({rows_label})",
                f"{_num(entry.get('p50_ms'), '.1f')}/{_num(p99, '.1f')}",
                target=f"p99 ≤ {W7_P99_MS:g} ms",
                verdict=_at_most(p99, W7_P99_MS),
            )
        )
    share = get(results, "W7", "dashboard", "db_core_share_every_3s")
    rows.append(
        Row(
            "W7 operator view",
            "MariaDB CPU, one dashboard refreshing every 3 s",
            "n/a" if share is None else f"{share:.2%} of a core",
            target=f"≤ {W7_DASHBOARD_SHARE:.0%}",
            verdict=_at_most(share, W7_DASHBOARD_SHARE),
        )
    )
    ratio = get(results, "W7", "claim_ratio")
    rows.append(
        Row(
            "W7 operator view",
            f"W1 tasks/s on it ({_num(get(results, 'W7', 'claim_big_tasks_per_s'))}) ÷ on an empty table",
            _num(ratio, ".2f"),
            target=f"≥ {W4_RATIO}",
            verdict=_at_least(ratio, W4_RATIO),
        )
    )
    return rows


def _w10_rows(results: dict) -> list[Row]:
    skipped = _skipped(results, "W10", "W10 Client")
    if skipped:
        return skipped
    many = get(results, "W10", "enqueue_many") or {}
    ratio = many.get("ratio")
    single = get(results, "W10", "enqueue") or {}
    pickup = get(results, "W10", "pickup") or {}
    p99 = pickup.get("p99_ms")
    value = "/".join(_num(pickup.get(k), ".1f") for k in ("p50_ms", "p95_ms", "p99_ms"))
    if pickup.get("never_picked_up"):
        value += f" ({pickup['never_picked_up']} never ran)"
    tasks = _num(get(results, "W10", "tasks"))
    return [
        Row(
            "W10 raw INSERT ceiling", f"tasks/s, {tasks} tasks", _num(many.get("ceiling_tasks_per_s")), "1.00"
        ),
        Row(
            "W10 Client.enqueue_many",
            f"tasks/s, {tasks} tasks",
            _num(many.get("client_tasks_per_s")),
            _num(ratio, ".2f"),
            f"≥ {W10_ENQUEUE_MANY_RATIO:.2f} × raw INSERT",
            _at_least(ratio, W10_ENQUEUE_MANY_RATIO),
        ),
        Row(
            "W10 Client.enqueue",
            "p50/p99 ms per call",
            f"{_num(single.get('p50_ms'), '.2f')}/{_num(single.get('p99_ms'), '.2f')}",
        ),
        Row(
            "W10 Client pickup, scan 5 s",
            "p50/p95/p99 ms",
            value,
            target=f"p99 ≤ {W10_PICKUP_P99_MS:g} ms",
            verdict=_verdict(
                None if p99 is None else p99 <= W10_PICKUP_P99_MS and not pickup.get("never_picked_up")
            ),
        ),
    ]


def _w11_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W11", "W11 limits")
    if skipped:
        return skipped
    rows = []
    for part, label in (("global", "global_max_workers 50"), ("rate", "rate_limit 10M/min")):
        rate, ratio = get(results, "W11", part, "tasks_per_s"), get(results, "W11", part, "ratio_to_w1")
        rows.append(Row(f"W11 W1 + {label}", "tasks/s", _num(rate), _ratio(rate, ceiling)))
        rows.append(
            Row(
                f"W11 W1 + {label}",
                "ratio to W1",
                _num(ratio, ".2f"),
                target=f"≥ {W11_RATIO}",
                verdict=_at_least(ratio, W11_RATIO),
            )
        )
    cancel = get(results, "W11", "cancel") or {}
    p99 = cancel.get("p99_ms")
    rows.append(
        Row(
            "W11 cancel a running task",
            "request → ended, p50/p99/max ms",
            "/".join(_num(cancel.get(k), ".1f") for k in ("p50_ms", "p99_ms", "max_ms")),
            target=f"p99 ≤ {W11_CANCEL_P99_MS:g} ms",
            verdict=_at_most(p99, W11_CANCEL_P99_MS),
        )
    )
    return rows


def _w12_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W12", "W12 processes")
    if skipped:
        return skipped
    one = get(results, "W12", "cpu_1_process", "tasks_per_s")
    two = get(results, "W12", "cpu_2_processes", "tasks_per_s")
    noop = get(results, "W12", "noop_2_processes", "tasks_per_s")
    speedup = get(results, "W12", "cpu_speedup")
    return [
        Row("W12 CPU-bound ~2 ms, 1 process", "tasks/s", _num(one), _ratio(one, ceiling)),
        Row("W12 CPU-bound ~2 ms, 2 processes", "tasks/s", _num(two), _ratio(two, ceiling)),
        Row(
            "W12 CPU-bound ~2 ms",
            "2 processes ÷ 1",
            _num(speedup, ".2f"),
            target=f"≥ {W12_CPU_SPEEDUP}",
            verdict=_at_least(speedup, W12_CPU_SPEEDUP),
        ),
        Row("W12 no-op, 2 processes", "tasks/s", _num(noop), _ratio(noop, ceiling)),
        Row("W12 no-op, 2 processes", "ratio to W1", _num(get(results, "W12", "noop_ratio_to_w1"), ".2f")),
    ]


def _w4_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W4", "W4 big table")
    if skipped:
        return skipped
    rate, ratio = get(results, "W4", "tasks_per_s"), get(results, "W4", "ratio_to_empty")
    empty = get(results, "W4", "empty_tasks_per_s")
    explain = get(results, "W4", "explain") or {}
    return [
        Row("W4 big table", "tasks/s", _num(rate), _ratio(rate, ceiling)),
        Row(
            "W4 big table",
            f"÷ W1 on an empty table, alternating runs ({_num(empty)} tasks/s)",
            _num(ratio, ".2f"),
            target=f"≥ {W4_RATIO}",
            verdict=_at_least(ratio, W4_RATIO),
        ),
        Row("W4 big table", "ratio to W1 (the W1 workload)", _num(get(results, "W4", "ratio_to_w1"), ".2f")),
        Row(
            "W4 big table",
            "EXPLAIN claim key",
            f"{explain.get('key')} ({explain.get('type')}, "
            f"rows {explain.get('rows')}, {explain.get('extra') or '-'})",
            target=f"{explain.get('status_schedule_index')}, no filesort",
            verdict=_verdict(explain.get("uses_status_schedule_index")),
        ),
    ]


def _w5_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W5", "W5 soak")
    if skipped:
        return skipped
    growth = get(results, "W5", "rss_growth_mb")
    checkpoint, tasks = get(results, "W5", "checkpoint"), get(results, "W5", "tasks")
    rate = get(results, "W5", "tasks_per_s")
    return [
        Row(
            "W5 soak",
            f"RSS start/after {checkpoint or 0:,}/end, MiB",
            "/".join(
                _num(get(results, "W5", k), ".1f")
                for k in ("rss_start_mb", "rss_checkpoint_mb", "rss_end_mb")
            ),
        ),
        Row(
            "W5 soak",
            f"RSS growth {checkpoint or 0:,} → {tasks or 0:,}, MiB",
            _num(growth, ".1f"),
            target=f"< {W5_GROWTH_MB:g}",
            verdict=_verdict(None if growth is None else growth < W5_GROWTH_MB),
        ),
        Row("W5 soak", "tasks/s", _num(rate), _ratio(rate, ceiling)),
        Row("W5 soak", CPU_FIGURE + " (steady)", _cpu(results, "W5")),
    ]


def _w6_rows(results: dict, ceiling: float | None) -> list[Row]:
    skipped = _skipped(results, "W6", "W6 two servers")
    if skipped:
        return skipped
    rate = get(results, "W6", "tasks_per_s")
    return [
        Row("W6 two servers", "combined tasks/s", _num(rate), _ratio(rate, ceiling)),
        Row("W6 two servers", "ratio to W1", _num(get(results, "W6", "ratio_to_w1"), ".2f")),
    ]


def _w9_rows(results: dict) -> list[Row]:
    skipped = _skipped(results, "W9", "W9 schedule fires")
    if skipped:
        return skipped
    entry = results["W9"]
    p99, duplicates = entry.get("created_p99_ms"), entry.get("duplicate_tasks")
    value = "/".join(
        _num(entry.get(k), ".1f") for k in ("created_p50_ms", "created_p99_ms", "created_max_ms")
    )
    met = None if p99 is None else entry["created_max_ms"] <= W9_CREATED_MS and not duplicates
    return [
        Row(
            "W9 schedule fires, 2 servers",
            "task created − fire time, p50/p99/max ms",
            f"{value} ({entry.get('fires')} fires, {duplicates} duplicates)",
            target=f"max ≤ {W9_CREATED_MS:g} ms, none twice",
            verdict=_verdict(met),
        ),
        Row(
            "W9 schedule fires, 2 servers",
            "task started − fire time, p50/p99 ms",
            "/".join(_num(entry.get(k), ".1f") for k in ("started_p50_ms", "started_p99_ms")),
        ),
    ]


def format_table(rows: list[Row]) -> str:
    header = Row("workload", "figure", "value", "÷ ceiling", "target", "verdict")
    cells = [header, *rows]
    widths = [
        max(len(getattr(row, f)) for row in cells)
        for f in ("workload", "figure", "value", "ratio", "target", "verdict")
    ]

    def line(row: Row) -> str:
        values = (row.workload, row.figure, row.value, row.ratio, row.target, row.verdict)
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def load_line(results: dict) -> str:
    """The machine's 1-minute load average before each workload: anything
    else running on the machine shows in every figure."""
    loads = [
        f"{name} {entry['loadavg_1m_before']:.2f}"
        for name, entry in results.items()
        if isinstance(entry, dict) and "loadavg_1m_before" in entry
    ]
    return "load average (1 min) before each workload: " + ", ".join(loads) if loads else ""


def targets(rows: list[Row]) -> list[dict[str, str]]:
    return [
        {
            "workload": r.workload,
            "figure": r.figure,
            "value": r.value,
            "target": r.target,
            "verdict": r.verdict,
        }
        for r in rows
        if r.target
    ]


def write_json(path: Path, results: dict, rows: list[Row]) -> None:
    document = {**results, "table": [row.__dict__ for row in rows], "targets": targets(rows)}
    path.write_text(json.dumps(document, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


# --- chart ------------------------------------------------------------------------------


def write_chart(path: Path, results: dict) -> str | None:
    """chart.png; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r requirements-bench.txt)"
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"geventq benchmark — {results.get('machine', {}).get('summary', '')}", fontsize=12)
    _throughput_panel(axes[0][0], results)
    _efficiency_panel(axes[0][1], results)
    _statements_panel(axes[0][2], results)
    _latency_panel(axes[1][0], results)
    _memory_panel(axes[1][1], results)
    _ratio_panel(axes[1][2], results)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def _bars(ax, labels: list[str], values: list[float | None], colors: list[str], fmt: str) -> None:
    heights = [v or 0 for v in values]
    bars = ax.bar(range(len(labels)), heights, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            "n/a" if value is None else format(value, fmt),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )


CEILING_COLOR, GEVENTQ_COLOR = "#9e9e9e", "#1f77b4"


def _throughput_panel(ax, results: dict) -> None:
    ceiling = get(results, "ceiling", "batched", "tasks_per_s")
    items = [
        ("ceiling batched", ceiling, CEILING_COLOR),
        ("ceiling per-task", get(results, "ceiling", "per_task", "tasks_per_s"), CEILING_COLOR),
        ("W1 1 server", get(results, "W1", "tasks_per_s"), GEVENTQ_COLOR),
        ("W4 +1M rows", get(results, "W4", "tasks_per_s"), GEVENTQ_COLOR),
        ("W5 soak", get(results, "W5", "tasks_per_s"), GEVENTQ_COLOR),
        ("W6 2 servers", get(results, "W6", "tasks_per_s"), GEVENTQ_COLOR),
    ]
    _bars(ax, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], ",.0f")
    if ceiling:
        ax.axhline(
            ceiling * W1_SHARE_OF_CEILING,
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"target: {W1_SHARE_OF_CEILING:.0%} of ceiling",
        )
        ax.legend(fontsize=8)
    ax.set_title("no-op throughput, tasks/s (concurrency 50)", fontsize=10)


def _efficiency_panel(ax, results: dict) -> None:
    items = [
        ("ceiling batched", get(results, "ceiling", "batched_sleep", "efficiency"), CEILING_COLOR),
        ("W2 geventq", get(results, "W2", "efficiency"), GEVENTQ_COLOR),
    ]
    _bars(ax, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], ".3f")
    ax.axhline(W2_EFFICIENCY, color="red", linestyle="--", linewidth=1, label=f"target ≥ {W2_EFFICIENCY}")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title("W2: 0.2 s sleeps at concurrency 200, ideal / drain", fontsize=10)


def _statements_panel(ax, results: dict) -> None:
    from tests.bench.workloads import WORK_COUNTERS

    sources = [
        ("ceiling batched", get(results, "ceiling", "batched", "sql_isolated")),
        ("W1 geventq", get(results, "W1", "sql_isolated")),
    ]
    bottoms = [0.0] * len(sources)
    for counter in WORK_COUNTERS:
        values = [
            max(0.0, (sql or {}).get("per_task_by_counter", {}).get(counter, 0.0)) for _, sql in sources
        ]
        if any(values):
            ax.bar(range(len(sources)), values, bottom=bottoms, label=counter.replace("Com_", ""))
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.set_xticks(range(len(sources)), [s[0] for s in sources], fontsize=8)
    for x, total in enumerate(bottoms):
        ax.annotate(f"{total:.3f}", (x, total), ha="center", va="bottom", fontsize=8)
    ax.axhline(
        STATEMENTS_PER_TASK, color="red", linestyle="--", linewidth=1, label=f"target ≤ {STATEMENTS_PER_TASK}"
    )
    ax.legend(fontsize=7)
    ax.set_title("SQL statements per task at saturation (counting proxy)", fontsize=10)


def _latency_panel(ax, results: dict) -> None:
    parts = [
        ("a: API, same server", "a_api_local", W3_API_P99_MS),
        ("b: API, other server", "b_api_remote", W3_API_P99_MS),
        ("c: SQL, scan 1 s", "c_sql_insert", 1000 + W3_SQL_SLACK_MS),
    ]
    width = 0.25
    for offset, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        values = [get(results, "W3", part, key) for _, part, _ in parts]
        xs = [x + (offset - 1) * width for x in range(len(parts))]
        ax.bar(xs, [v or 0 for v in values], width=width, label=key.replace("_ms", ""))
        for x, value in zip(xs, values, strict=True):
            if value is None:
                ax.annotate("n/a", (x, 1), ha="center", va="bottom", fontsize=7)
    for x, (_, _, limit) in enumerate(parts):
        ax.hlines(limit, x - 0.4, x + 0.4, colors="red", linestyles="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_ylim(1, 10_000)
    ax.set_xticks(range(len(parts)), [p[0] for p in parts], fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("W3 pickup latency, ms (start_time − created_at); red: p99 target", fontsize=10)


def _memory_panel(ax, results: dict) -> None:
    samples = get(results, "W5", "rss_samples") or []
    if samples:
        ax.plot([s[0] for s in samples], [s[1] for s in samples], color=GEVENTQ_COLOR)
        checkpoint = get(results, "W5", "rss_checkpoint_mb")
        if checkpoint is not None:
            after = get(results, "W5", "checkpoint") or 0
            ax.axhline(
                checkpoint + W5_GROWTH_MB,
                color="red",
                linestyle="--",
                linewidth=1,
                label=f"target: < {W5_GROWTH_MB:g} MiB growth after {after:,}",
            )
            ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "n/a", ha="center", transform=ax.transAxes)
    ax.set_xlabel("tasks done", fontsize=8)
    ax.set_title("W5 executor RSS, MiB", fontsize=10)


def _ratio_panel(ax, results: dict) -> None:
    items = [
        ("W4 ÷ W1 (1M finished rows)", get(results, "W4", "ratio_to_w1"), GEVENTQ_COLOR),
        ("W6 ÷ W1 (2 servers)", get(results, "W6", "ratio_to_w1"), GEVENTQ_COLOR),
    ]
    _bars(ax, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], ".2f")
    ax.axhline(W4_RATIO, color="red", linestyle="--", linewidth=1, label=f"W4 target ≥ {W4_RATIO}")
    ax.legend(fontsize=8)
    ax.set_title("throughput relative to W1", fontsize=10)

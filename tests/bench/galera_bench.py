"""W8: W1 (no-op tasks) and W2 (tasks sleeping 0.2 s) with three executors
on a 3-node MariaDB Galera cluster (tests/owngalera.py, one executor per node,
each listing its own node first in database.hosts), next to the same three
executors on the single node the rest of the bench uses, in the same run.
The figure is the ratio cluster ÷ single node.

Not in the default run (starting the cluster takes 15-30 s and needs
galera-4 and root): `python -m tests.bench --only W8`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tests.bench.benchdb import BenchDB, Server, ident
from tests.bench.procs import Executor, Unavailable, write_config
from tests.bench.report import Row, _num, _ratio, get
from tests.owngalera import PROVIDER, GaleraCluster

EXECUTORS = 3


def w8(ctx) -> dict[str, Any]:
    """W1 and W2 on the 3-node cluster next to one node; ratios cluster ÷ single."""
    if not os.path.exists(PROVIDER):
        raise Unavailable(f"{PROVIDER} is missing (install galera-4)")
    if os.geteuid() != 0:
        raise Unavailable("the cluster's nodes run as the mysql user: run the bench as root")
    result: dict[str, Any] = {"executors": EXECUTORS, "single": _both(ctx, ctx.db, None)}
    ctx.progress("  starting a 3-node Galera cluster")
    with GaleraCluster() as cluster:
        server = Server("127.0.0.1", cluster.nodes[0].port, "root", "")
        cluster_db = BenchDB(server, ctx.db.database)
        cluster_db.recreate()
        try:
            result["cluster"] = _both(ctx, cluster_db, cluster.hosts, cluster)
        finally:
            cluster_db.close()
    for workload in ("W1", "W2"):
        cluster_rate = result["cluster"][workload]["tasks_per_s"]
        single_rate = result["single"][workload]["tasks_per_s"]
        ratio = cluster_rate / single_rate if cluster_rate and single_rate else None
        result[f"{workload.lower()}_ratio"] = ratio
        ctx.progress(f"  {workload} cluster ÷ single node: {ratio or 0:.2f}")
    return result


def _both(ctx, db: BenchDB, hosts: list[str] | None, cluster: GaleraCluster | None = None) -> dict[str, Any]:
    sizes, where = ctx.sizes, "cluster" if hosts else "single"
    w1 = _counting_conflicts(
        cluster, _drain, ctx, db, hosts, f"w8_{where}_w1", sizes.w1_tasks, 50, "bench_noop", None
    )
    w2_params = {"seconds": sizes.sleep}
    w2 = _counting_conflicts(
        cluster, _drain, ctx, db, hosts, f"w8_{where}_w2", sizes.w2_tasks, 200, "bench_sleep", w2_params
    )
    return {"W1": w1, "W2": w2}


# Transactions a node rolled back because another node's write set won:
# failed certification at COMMIT, or aborted by a replicated write (brute force).
CONFLICT_COUNTERS = ("wsrep_local_cert_failures", "wsrep_local_bf_aborts")


def _counting_conflicts(cluster: GaleraCluster | None, drain, *args) -> dict[str, Any]:
    """Run one drain; on the cluster, with how many transactions lost to another node meanwhile."""
    if cluster is None:
        return drain(*args)

    def total() -> int:
        return sum(int(node.status(name) or 0) for node in cluster.nodes for name in CONFLICT_COUNTERS)

    before = total()
    figures = drain(*args)
    figures["conflicts"] = total() - before
    args[0].progress(f"    transactions lost to another node: {figures['conflicts']:,}")
    return figures


def _drain(
    ctx,
    db: BenchDB,
    hosts: list[str] | None,
    label: str,
    tasks: int,
    max_workers: int,
    task_type: str,
    params: dict | None,
) -> dict[str, Any]:
    # Imported here: workloads.py registers this workload.
    from tests.bench.workloads import drain_figures, wait_drained

    table = f"bench_{label}"
    db.add_queue(table, table, max_workers=max_workers, scan_interval=1)
    db.insert_due(table, task_type, tasks, params)
    workdir = ctx.workdir(f"W8/{label}")
    procs = [
        Executor(_config(workdir / f"s{n + 1}", db, hosts, n), f"bench-{label}-{n + 1}", db)
        for n in range(EXECUTORS)
    ]
    try:
        for proc in procs:
            proc.start()
        wait_drained(dataclasses.replace(ctx, db=db), table, tasks, procs, timeout=max(120.0, tasks / 50))
    finally:
        for proc in procs:
            proc.stop()
    figures = drain_figures(db, table)
    figures["tasks_per_s"] = figures["tasks"] / figures["drain_s"] if figures["drain_s"] else None
    rows = db.query(f"SELECT server_id, COUNT(*) AS n FROM {ident(table)} GROUP BY server_id")
    figures["tasks_by_server"] = {row["server_id"]: int(row["n"]) for row in rows}
    figures["executor_warnings"] = [line for proc in procs for line in proc.warnings()][:10]
    for key in ("first_start", "last_end"):
        figures[key] = str(figures[key])
    ctx.progress(f"  {label}: {figures['tasks_per_s'] or 0:,.0f} tasks/s over {figures['drain_s']:.2f}s")
    return figures


def _config(workdir: Path, db: BenchDB, hosts: list[str] | None, index: int) -> Path:
    """The bench's config; on the cluster, this executor's own node first."""
    path = write_config(workdir, db)
    if hosts:
        config = json.loads(path.read_text())
        config["database"]["hosts"] = hosts[index:] + hosts[:index]
        path.write_text(json.dumps(config, indent=2))
    return path


def w8_rows(results: dict) -> list[Row]:
    """The report's rows; none unless W8 was asked for (it is not in the default run)."""
    if "W8" not in results:
        return []
    if get(results, "W8", "status") in ("n/a", "error"):
        return [Row("W8 Galera", "", get(results, "W8", "reason") or "", verdict="n/a")]
    rows = []
    for workload in ("W1", "W2"):
        single = get(results, "W8", "single", workload, "tasks_per_s")
        cluster = get(results, "W8", "cluster", workload, "tasks_per_s")
        rows.append(Row(f"W8 {workload}, one node", "tasks/s (3 executors)", _num(single)))
        figure = "tasks/s (3 executors), ratio ÷ one node"
        rows.append(Row(f"W8 {workload}, 3-node Galera", figure, _num(cluster), _ratio(cluster, single)))
    return rows

"""`python -m tests.bench [--quick] [--only W1,W3] [--out DIR]`

Runs the ceiling loop and W1..W6, W9..W12 (W7, ten million rows, and W8, a
3-node Galera cluster, only when named in --only) against real executor
processes in a database of its own (dropped and recreated), prints one table, and writes
DIR/results.json and DIR/chart.png. A workload that cannot run here is
reported as n/a with the reason; the others still run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.bench import galera_bench, profile, report
from tests.bench.benchdb import BenchDB, Server
from tests.bench.procs import Unavailable, remove_job_logs
from tests.bench.workloads import WORKLOADS, Context, Sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts for a smoke run (W1 2,000 tasks, W5 10,000, ...)"
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all but {','.join(ON_REQUEST)})",
    )
    parser.add_argument("--out", default="bench-results", help="output folder (default: bench-results)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every executor and ceiling loop with py-spy into DIR/profile-*.txt "
        "and print the hot spots (pip install py-spy)",
    )
    parser.add_argument(
        "--database", default="geventq_bench", help="database to drop and recreate (default: geventq_bench)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    return parser


# The ceiling first (every figure is a ratio to it); W5, the longest, last.
RUN_ORDER = ["ceiling", "W1", "W2", "W3", "W4", "W6", "W9", "W10", "W11", "W12", "W5", "W7", "W8"]
# Run only when named in --only: W7 loads ten million rows (minutes); W8
# starts a 3-node Galera cluster (galera_bench.py).
ON_REQUEST = ("W7", "W8")


def selected(only: str | None) -> list[str]:
    if not only:
        return [name for name in WORKLOADS if name not in ON_REQUEST]
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    by_lower = {name.lower(): name for name in WORKLOADS}
    unknown = [name for name in wanted if name.lower() not in by_lower]
    if unknown:
        raise SystemExit(
            f"--only: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    chosen = {by_lower[name.lower()] for name in wanted}
    return [name for name in WORKLOADS if name in chosen]  # ceiling first: the others are ratios to it


class Progress:
    """A line per step with the elapsed time since the bench started."""

    def __init__(self):
        self.began = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f}s] {message}", file=sys.stderr, flush=True)


def machine(db: BenchDB) -> dict[str, Any]:
    import gevent
    import pymysql

    version = db.scalar("SELECT VERSION() AS v")
    cpus = os.cpu_count()
    return {
        "cpus": cpus,
        "python": platform.python_version(),
        "gevent": gevent.__version__,
        "pymysql": pymysql.__version__,
        "server": version,
        "platform": platform.platform(),
        "summary": f"{cpus} cores, Python {platform.python_version()}, gevent {gevent.__version__}, "
        f"MariaDB/MySQL {version.split('-')[0]}",
    }


def run_workload(name: str, ctx: Context) -> dict[str, Any]:
    # Let the disk and MariaDB settle after the previous workload (a dropped
    # million-row table, thousands of files) before measuring the next one.
    ctx.db.reset_between_workloads()
    time.sleep(ctx.sizes.settle_s)
    load = os.getloadavg()[0]
    ctx.progress(f"{name}: start (load average {load:.2f})")
    began = time.monotonic()
    try:
        result = WORKLOADS[name](ctx)
        result["loadavg_1m_before"] = load
        ctx.progress(f"{name}: done in {time.monotonic() - began:.1f}s")
        return result
    except Unavailable as reason:
        ctx.progress(f"{name}: n/a ({reason})")
        return {"status": "n/a", "reason": str(reason)}
    except Exception as error:  # noqa: BLE001 - one broken workload must not hide the others
        traceback.print_exc()
        ctx.progress(f"{name}: error after {time.monotonic() - began:.1f}s: {type(error).__name__}: {error}")
        return {"status": "error", "reason": f"{type(error).__name__}: {str(error)[:300]}"}


def profiles(results: dict[str, Any]) -> list[tuple[str, dict]]:
    """(label, summary) of every profile taken, W1's first."""
    found = []
    for name in ("W1", *[n for n in WORKLOADS if n != "W1"]):
        entry = results.get(name) or {}
        if name == "ceiling":
            found += [
                (f"ceiling {mode}", run["profile"])
                for mode, run in entry.items()
                if isinstance(run, dict) and run.get("profile")
            ]
        else:
            servers = entry.get("profile") or {}
            found += [(f"{name} {server}", summary) for server, summary in servers.items()]
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = selected(args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    db = BenchDB(Server(args.host, args.port, args.user, args.password), args.database)
    progress(f"recreating database {args.database}")
    db.recreate()
    sizes = Sizes.quick() if args.quick else Sizes()
    results: dict[str, Any] = {
        "command": "python -m tests.bench " + " ".join(argv or sys.argv[1:]),
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine(db),
    }
    profile_dir = None
    if args.profile:
        if not profile.available():
            raise SystemExit("--profile needs py-spy: pip install py-spy")
        profile_dir = out
    ctx = Context(db=db, out=out, sizes=sizes, progress=progress, results=results, profile_dir=profile_dir)
    for name in sorted(names, key=RUN_ORDER.index):
        results[name] = run_workload(name, ctx)
    db.reset_between_workloads()
    progress(f"removed {remove_job_logs(out / 'work'):,} job log files")
    rows = report.build_rows(results) + galera_bench.w8_rows(results)
    print(report.format_table(rows))
    print(report.load_line(results))
    for name, summary in profiles(results):
        print("\n" + profile.format_summary(name, summary))
    report.write_json(out / "results.json", results, rows)
    why_not = report.write_chart(out / "chart.png", results)
    progress(
        f"wrote {out / 'results.json'}"
        + (f"; chart skipped: {why_not}" if why_not else f" and {out / 'chart.png'}")
    )
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

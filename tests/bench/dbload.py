"""`python -m tests.bench.dbload [--processes 8] [--queues 20] [--seconds 40]`

The database load of many executors: a written model of the statements per
second that idle and busy servers send (heartbeats, scans, claims, outcomes,
schedules, maintenance), checked against a measured run of one supervisor
(`geventq run --processes N`) on Q queues on this machine, then applied to
100 servers x 20 queues.

The measurement counts what the executors send through the counting proxy
(tests.bench.sqlcount), so other clients of the server do not pollute it;
SHOW GLOBAL STATUS deltas (Questions, less the producer's inserts and our
own SHOW) are printed beside it for reference.

Busy means: every queue gets one task per second (inserted by SQL, so found
by a scan), each task sleeps 5 s. The servers start together, so their scans
of a queue line up: every scan_interval the first of them claims the queue's
batch in one transaction (the others find the rows locked or gone), and the
batch finishes together 5 s later in one grouped outcome. Claims and
outcomes are therefore per queue, not per server; what grows with the
servers is the cancel watch, which polls every 0.5 s on each server that has
tasks running (counted in the run, at most min(servers, queues) here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql

from tests.bench.procs import BENCH_HANDLERS, REPO
from tests.bench.sqlcount import CountingProxy

# The executor's own cadences (geventq defaults and constants).
SCHEDULE_PEEK_EVERY = 1.0  # firing.MAX_SLEEP: the firer re-reads schedules at least this often
CANCEL_POLL_EVERY = 0.5  # cancels.POLL_EVERY, only while something runs
RATE_SLICES_EVERY = 60.0  # housekeeping.RETENTION_EVERY: one DELETE of old rate slices
BUSY_TASK_SECONDS = 5.0


@dataclass(frozen=True)
class Settings:
    servers: int
    queues: int
    heartbeat_interval: float = 5.0
    config_sync_interval: float = 10.0
    scan_interval: float = 5.0


def idle_per_server(s: Settings) -> dict[str, float]:
    """Statements per second of one server with nothing to do, by source."""
    return {
        # one UPDATE servers per interval, from the heartbeat thread
        "heartbeat": 1 / s.heartbeat_interval,
        # per queue and scan: the claim's SELECT ... FOR UPDATE SKIP LOCKED and
        # its COMMIT (nothing found, no UPDATE), then seconds_until_next_due
        "scans": s.queues * 3 / s.scan_interval,
        # list_queue_configs
        "config sync": 1 / s.config_sync_interval,
        # schedule_store.peek (no schedule due)
        "schedules": 1 / SCHEDULE_PEEK_EVERY,
        # per heartbeat_interval: rescue_decision, one rescue UPDATE and one
        # find_own_claims per registered table, tables_with_cancel_requests
        "maintenance": (2 * s.queues + 2) / s.heartbeat_interval,
        "rate slices": 1 / RATE_SLICES_EVERY,
    }


def busy_extra(s: Settings, running_servers: int) -> dict[str, float]:
    """What the busy scenario adds to the idle servers, for the whole cluster:
    per queue and scan one claim UPDATE (its SELECT and COMMIT are the idle
    scan's) and one grouped outcome UPDATE; the cancel watch's SELECT every
    0.5 s on each server with tasks running."""
    return {
        "claims": s.queues / s.scan_interval,
        "outcomes": s.queues / s.scan_interval,
        "cancel watch": running_servers / CANCEL_POLL_EVERY,
    }


def model(s: Settings, running_servers: int | None = None, supervisors: int = 0) -> float:
    """Statements/s of the cluster: idle, or busy with `running_servers`."""
    total = s.servers * sum(idle_per_server(s).values())
    if running_servers is not None:
        total += sum(busy_extra(s, running_servers).values())
    # a supervisor reads its children's heartbeats once per heartbeat_interval
    return total + supervisors / s.heartbeat_interval


# --- the measured run --------------------------------------------------------------


class Server:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._status_conn: pymysql.connections.Connection | None = None

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        a = self.args
        return pymysql.connect(
            host=a.host, port=a.port, user=a.user, password=a.password, database=database, autocommit=True
        )

    def status(self) -> dict[str, int]:
        """One connection for every read, so only its SHOW counts in the delta."""
        if self._status_conn is None:
            self._status_conn = self.connect()
        with self._status_conn.cursor() as cur:
            cur.execute(
                "SHOW GLOBAL STATUS WHERE Variable_name = 'Questions' OR Variable_name LIKE 'Com\\_%%'"
            )
            return {name: int(value) for name, value in cur.fetchall()}

    def now(self):
        with self._status_conn.cursor() as cur:
            cur.execute("SELECT NOW(3)")
            return cur.fetchone()[0]

    def running_servers(self, database: str, tables: list[str], window: tuple) -> int:
        """Servers that had a task running at some moment of the window."""
        union = " UNION ".join(
            f"SELECT server_id FROM `{database}`.`{table}` WHERE start_time < %(end)s "
            "AND (end_time IS NULL OR end_time > %(begin)s)"
            for table in tables
        )
        with self._status_conn.cursor() as cur:
            cur.execute(
                f"SELECT COUNT(DISTINCT server_id) FROM ({union}) AS ran",
                {"begin": window[0], "end": window[1]},
            )
            return int(cur.fetchone()[0])


def prepare(server: Server, database: str, queues: int) -> list[str]:
    from geventq.schema import INIT_SQL, split_statements

    with server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        cur.execute(f"CREATE DATABASE `{database}`")
        cur.execute(f"USE `{database}`")
        # the tables without init.sql's sample queues and schedules
        for statement in split_statements(INIT_SQL.read_text()):
            if not statement.lstrip().upper().startswith("INSERT"):
                cur.execute(statement)
        tables = [f"dbload_q{index:02d}" for index in range(1, queues + 1)]
        for table in tables:
            cur.execute(f"CREATE TABLE `{table}` LIKE email_tasks")
            cur.execute(
                "INSERT INTO queue_configs (queue_name, table_name, max_workers, scan_interval, status) "
                "VALUES (%s, %s, 20, 5, 1)",
                (table, table),
            )
        cur.execute("DELETE FROM queue_configs WHERE table_name NOT LIKE 'dbload%%'")
    return tables


class Producer(threading.Thread):
    """One task per queue per second, one INSERT each, on its own connection."""

    def __init__(self, server: Server, database: str, tables: list[str]):
        super().__init__(daemon=True)
        self.conn = server.connect(database)
        self.tables = tables
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        params = json.dumps({"seconds": BUSY_TASK_SECONDS})
        next_at = time.monotonic()
        with self.conn.cursor() as cur:
            while not self.stopping.is_set():
                for table in self.tables:
                    insert = f"INSERT INTO `{table}` (task_type, task_params) VALUES ('bench_sleep', %s)"
                    cur.execute(insert, (params,))
                    self.sent += 1
                next_at += 1.0
                self.stopping.wait(max(0.0, next_at - time.monotonic()))


def measure(server: Server, proxy: CountingProxy, seconds: float, producer_sent=lambda: 0) -> dict:
    before, sent_before = server.status(), producer_sent()
    began = server.now()
    proxy.reset()
    time.sleep(seconds)
    counted = proxy.snapshot()
    after, sent = server.status(), producer_sent() - sent_before
    ended = server.now()
    questions = after["Questions"] - before["Questions"] - sent - 1  # less the producer and one SHOW
    return {
        "proxy_per_s": counted.get("Questions", 0) / seconds,
        "proxy_by_statement_per_s": {
            name: round(count / seconds, 2)
            for name, count in sorted(counted.items())
            if name not in ("Questions", "Connections")
        },
        "global_questions_per_s": questions / seconds,
        "window": (began, ended),
    }


def wait_online(server: Server, database: str, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the supervisor exited with {process.returncode}")
        try:
            with server.connect(database) as conn, conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM servers WHERE state = 'online'")
                if cur.fetchone()[0] == count:
                    return
        except pymysql.MySQLError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{count} executors not online after 60 s")


def run(args: argparse.Namespace) -> dict:
    server = Server(args)
    server.status()  # its connection now, before the executors take theirs
    tables = prepare(server, args.database, args.queues)
    proxy = CountingProxy(args.host, args.port)
    workdir = Path(tempfile.mkdtemp(prefix="geventq-dbload-"))
    config = {
        "database": {
            "host": "127.0.0.1",
            "port": proxy.port,
            "username": args.user,
            "password": args.password,
            "database": args.database,
            # 8 processes x 4 pools must fit max_connections (151 by default)
            "pool_size": 4,
        },
        "executor": {"server_id": "dbload"},
        "admin": {"port": 0},
        "handlers": {"paths": [str(BENCH_HANDLERS)]},
        "log": {"dir": str(workdir / "logs")},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "geventq", "run", "--config", str(workdir / "config.json")]
    command += ["--processes", str(args.processes)]
    with open(workdir / "output.txt", "wb") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_online(server, args.database, args.processes, process)
        time.sleep(args.settle)
        print(f"measuring {args.seconds:g} s idle ...", file=sys.stderr)
        idle = measure(server, proxy, args.seconds)
        producer = Producer(server, args.database, tables)
        producer.start()
        time.sleep(args.settle + BUSY_TASK_SECONDS)  # until batches start and finish every scan
        print(f"measuring {args.seconds:g} s busy ...", file=sys.stderr)
        busy = measure(server, proxy, args.seconds, lambda: producer.sent)
        producer.stopping.set()
        busy["running_servers"] = server.running_servers(args.database, tables, busy["window"])
    finally:
        process.terminate()
        process.wait(60)
        proxy.close()
    settings = Settings(servers=args.processes, queues=args.queues)
    at_scale = Settings(servers=100, queues=20)
    return {
        "settings": settings.__dict__,
        "idle": {**idle, "model_per_s": model(settings, supervisors=1)},
        "busy": {**busy, "model_per_s": model(settings, busy["running_servers"], supervisors=1)},
        "model_idle_per_server": idle_per_server(settings),
        "model_busy_extra": busy_extra(settings, busy["running_servers"]),
        "at_100_servers_x_20_queues": {
            "idle_per_s": model(at_scale),
            # every queue's batch on another server: 20 servers with tasks running
            "busy_per_s": model(at_scale, running_servers=min(at_scale.servers, at_scale.queues)),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.dbload", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--queues", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=40, help="each measured window (default 40)")
    parser.add_argument("--settle", type=float, default=10, help="seconds before each window (default 10)")
    parser.add_argument("--database", default="geventq_dbload")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    result = run(parser.parse_args())
    for phase in ("idle", "busy"):
        entry = result[phase]
        running = f", {entry['running_servers']} servers running tasks" if "running_servers" in entry else ""
        print(
            f"{phase}{running}: measured {entry['proxy_per_s']:.1f} statements/s through the proxy "
            f"(global Questions {entry['global_questions_per_s']:.1f}/s), model {entry['model_per_s']:.1f}/s"
        )
        print(f"  by statement: {entry['proxy_by_statement_per_s']}")
    scale = result["at_100_servers_x_20_queues"]
    print(
        f"model at 100 servers x 20 queues: idle {scale['idle_per_s']:.0f}/s, "
        f"busy {scale['busy_per_s']:.0f}/s"
    )
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()

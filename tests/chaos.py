"""Chaos soak: three executors, two open queues and one pinned queue, tens of
thousands of tasks of mixed kinds, and a seeded schedule of faults; then an
invariant checker reads what happened.

    python -m tests.chaos --minutes 1 [--seed N] [--keep] [--cpu-hog N] [--own-mariadb]

It makes its own database (geventq_chaos_<hex>) on MariaDB at
127.0.0.1:3306 and puts a fault proxy (tests/faultproxy.py) between each
executor and the database, so one server can be cut off alone. For
`--minutes` it inserts tasks (fast, slow, failing, flaky, timing out) and
applies faults, one every few seconds, picked by the seed:

- sigkill: SIGKILL a server, restart it (same server_id) 0.5 to 4 s later;
- sigterm: SIGTERM a server (graceful drain), restart it once it is gone;
- blackhole: a partition of one server's database traffic for 1 to 10 s;
- drop: cut every connection of one server at once;
- refuse: one server's database away (connections cut, new ones refused)
  for 1 to 8 s;
- move: pin the pinned queue to another server, or an open queue to one;
- resize: a queue's max_workers to 1..60 for 3 to 8 s;
- disable: a queue off for 1 to 5 s, then on again;
- cancel: cancel up to 20 pending tasks through geventq.Client;
- cancel_running: cancel up to 5 running tasks of one table through a live
  server's admin API (`POST /admin/task/cancel`), whichever server runs them;
- limits: lower the limited queue's global_max_workers (1 to 5) and
  rate_limit (5 to 30 per 2 s) for 2 to 6 s, then restore them;
- schedule_run: run a schedule now through a live server's admin API
  (`POST /admin/schedule/run`), while the servers fire it;
- child_kill: SIGKILL one child of the supervisor (below); it must come back;
- child_stop: SIGSTOP one child of the supervisor for 1 s (it resumes) or
  for heartbeat_timeout + 5 s (the supervisor must kill and replace it);
- dbcrash (with --own-mariadb only): SIGKILL the database server itself and
  restart it on the same datadir 0.5 to 5 s later.

The `limited` queue (5 % of the tasks, open to all three servers with 10
workers each) has cluster-wide limits: global_max_workers 6, key_max_workers 2
over 8 concurrency keys, rate_limit 60 per 2 s; the checker's global_cap,
key_cap and rate_limit hold its runs to them, and cancel_final holds every run
a cancel stopped to a task that ended cancelled and never ran again.

The open2 queue's table has the optional columns priority and dedupe_key,
and its tasks go in through geventq.Client (enqueue_many, straight to the
database, waking the servers over HTTP): each with a priority, one in five
with a dedupe_key from a small pool, so keys clash while their holder is
pending or running (the checker's dedupe_once).

The first faults of every run are one of each of MUST_FAULTS (sigkill,
blackhole, cancel_running, child_kill, limits) in a seeded order, so a short
run tries every class however few faults it draws; then the weighted draw.

`--cpu-hog N` runs N busy loops (`python -c 'while 1: pass'`, at the same
priority as everything else) for the whole soak, so every timing assumption
is tried on a machine with no idle core. `--own-mariadb` puts the task tables
on a private MariaDB (tests/ownmariadb.py) that the soak may crash; the
ground truth (the runs and the fault log) stays on the machine's MariaDB,
in a database of the same name.

A fourth server is a supervisor, `geventq run --processes 2` (children sv-1
and sv-2, through a fault proxy of their own); only the child_ faults touch
it, one every 15 s at most (the supervisor stops at 6 restarts a minute).
The checker's children_replaced holds it to replacing every child that died.

Recurring tasks fire meanwhile into the `sched` queue: every second, every
minute (cron), and every 2 s with overlap: skip and 3-second tasks; the
checker's one_task_per_fire and no_fire_gap hold them to exactly one task
per fire time and no fire missing (the grace is 60 s and one server always
stays healthy, so no gap is allowed).

Then every fault is healed, every queue row restored, every server up (the
schedules are paused: the drain must end); it
waits until no task is pending or running (failing when no task has ended
for 30 s, or after 5 minutes), stops the servers with
SIGTERM, and runs tests/invariants.py over the tables. It prints a report
and exits 0 when every invariant holds, 1 otherwise (keeping the database
and the logs for a look). Progress lines go to stdout every 5 s.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pymysql

from geventq import Client, Status, admin_store
from geventq.errors import DatabaseUnavailable, TaskStateError
from tests.faultproxy import FaultProxy
from tests.invariants import check, log_fault, prepare
from tests.ownmariadb import OwnMariaDB
from tests.support import ExecutorProcess, TestDatabase, http, wait_for, write_config

SERVERS = ("s1", "s2", "s3")
# queue -> (table, server_id, max_workers, task_timeout); pinned to s1
QUEUES = {
    "open1": ("chaos_open1", "", 40, 5),
    "open2": ("chaos_open2", "", 40, 5),
    "pinned": ("chaos_pinned", "s1", 20, 5),
    "sched": ("chaos_sched", "", 20, 5),  # only the schedules below put tasks here
    "limited": ("chaos_limited", "", 10, 5),  # with LIMITS below, across the cluster
}
# The limited queue's cluster-wide limits (the invariants global_cap, key_cap
# and rate_limit check the runs against them): 30 servers' worth of slots
# capped at 6, at most 2 per concurrency_key, 60 claims in any 2 s.
LIMITS = {"global_max_workers": 6, "key_max_workers": 2, "rate_limit": 60, "rate_period": 2}
LIMITED_TABLE, LIMITED_KEYS = "chaos_limited", 8
# name -> the schedules row's columns
SCHEDULES = {
    "chaos_tick": {"interval_seconds": 1, "task_params": '{"kind": "fast"}'},
    "chaos_minute": {"cron": "* * * * *", "task_params": '{"kind": "fast"}'},
    "chaos_overlap": {
        "interval_seconds": 2,
        "overlap": "skip",
        "task_params": '{"kind": "slow", "seconds": 3}',
    },
}
TABLE_SHARE = (("chaos_open1", 0.38), ("chaos_open2", 0.38), ("chaos_pinned", 0.19), ("chaos_limited", 0.05))
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 0.5, 3
SHUTDOWN_TIMEOUT = 3
# The fault classes every run applies first: a crash, a partition, a cancel of
# running tasks, a supervised child's death, lowered limits.
MUST_FAULTS = ["sigkill", "blackhole", "cancel_running", "child_kill", "limits"]
FAULT_WEIGHTS = {
    "sigkill": 3,
    "sigterm": 2,
    "blackhole": 3,
    "drop": 2,
    "refuse": 2,
    "move": 2,
    "resize": 2,
    "disable": 2,
    "cancel": 1,
    "cancel_running": 2,
    "limits": 1,
    "schedule_run": 1,
    "child_kill": 2,
    "child_stop": 2,
}
SUPERVISOR = "sv"  # `run --processes 2`: its children are sv-1 and sv-2
SUPERVISED = ("sv-1", "sv-2")
CHILD_FAULT_GAP = 15.0  # at most 4 child restarts a minute, under the crash-loop limit
LONG_CHILD_STOP = HEARTBEAT_TIMEOUT + 5  # past the stale heartbeat and the supervisor's check
# Only when the soak has a database server of its own to crash.
DBCRASH_WEIGHT = 2
# The soak's own statements while its database is being crashed: tried again this much later.
RETRY_WHILE_DATABASE_DOWN = 0.5
DATABASE_DOWN = (pymysql.err.OperationalError, pymysql.err.InterfaceError, DatabaseUnavailable)
# The table whose tasks go in through geventq.Client, with priority and dedupe_key.
CLIENT_TABLE, CLIENT_QUEUE = "chaos_open2", "open2"
DEDUPE_SHARE, DEDUPE_KEYS = 0.2, 50
PROGRESS_EVERY = 5.0
# The drain after the faults: it fails only when no task has ended for this
# long (a stall), or past a hard cap. A fixed deadline would assert a moment:
# on a loaded machine a backlog of 5-second timeouts on the 20-worker pinned
# queue alone can take longer than any fixed guess, while every task ends.
DRAIN_STALL = 30.0
DRAIN_CAP = 300.0


# --- the tasks -------------------------------------------------------------------


def task_mix(rng: random.Random) -> tuple[dict, int]:
    """(params, max_retries) of one task."""
    roll = rng.random()
    if roll < 0.86:
        return {"kind": "fast"}, 5
    if roll < 0.90:
        return {"kind": "slow", "seconds": round(rng.uniform(0.2, 1.0), 2)}, 5
    if roll < 0.93:
        return {"kind": "fail"}, 2
    if roll < 0.98:
        return {"kind": "flaky", "succeed_on": rng.choice((2, 3))}, 4
    # task_timeout is 5 s on every queue: this sleep never ends by itself
    return {"kind": "timeout", "seconds": 30}, 1


def insert_tasks(db: TestDatabase, rng: random.Random, count: int, client: Client | None = None) -> int:
    per_table: dict[str, list] = {table: [] for table, _ in TABLE_SHARE}
    for _ in range(count):
        roll, table = rng.random(), TABLE_SHARE[-1][0]
        for name, share in TABLE_SHARE:
            if roll < share:
                table = name
                break
            roll -= share
        params, max_retries = task_mix(rng)
        row = ("chaos", json.dumps(params), max_retries)
        if table == LIMITED_TABLE:
            row += (f"key{rng.randrange(LIMITED_KEYS)}",)
        per_table[table].append(row)
    if client is not None:
        client.enqueue_many(CLIENT_QUEUE, [client_task(rng, *row) for row in per_table.pop(CLIENT_TABLE)])
    with db.connect() as conn, conn.cursor() as cur:
        for table, rows in per_table.items():
            columns = "task_type, task_params, max_retries" + (
                ", concurrency_key" if table == LIMITED_TABLE else ""
            )
            values = ", ".join(["%s"] * len(columns.split(",")))
            for start in range(0, len(rows), 2000):
                cur.executemany(
                    f"INSERT INTO `{table}` ({columns}) VALUES ({values})", rows[start : start + 2000]
                )
    return count


def client_task(rng: random.Random, task_type: str, params: str, max_retries: int) -> dict:
    task = {
        "task_type": task_type,
        "params": params,
        "max_retries": max_retries,
        "priority": rng.randint(0, 9),
    }
    if rng.random() < DEDUPE_SHARE:
        task["dedupe_key"] = f"k{rng.randrange(DEDUPE_KEYS)}"
    return task


def add_optional_columns(db: TestDatabase, table: str) -> None:
    """priority and dedupe_key, as queue/create makes them (admin_store.OPTIONAL_TASK_DDL)."""
    lines = [line for column in ("priority", "dedupe_key") for line in admin_store.OPTIONAL_TASK_DDL[column]]
    db.execute(
        f"ALTER TABLE `{table}` "
        + ", ".join(("ADD " if "KEY" in line.split()[:2] else "ADD COLUMN ") + line for line in lines)
    )


# --- one server: its proxy and its executor process ------------------------------


class Server:
    def __init__(self, server_id: str, db: TestDatabase, workdir: Path):
        self.server_id = server_id
        self.db = db
        self.proxy = FaultProxy(upstream=("127.0.0.1", db.port)).start()
        self.config = write_config(
            workdir / server_id,
            db,
            database={
                "host": "127.0.0.1",
                "port": self.proxy.port,
                "read_timeout": 3,
                "connect_timeout": 2,
                "pool_size": 10,
            },
            executor={
                "heartbeat_interval": HEARTBEAT_INTERVAL,
                "heartbeat_timeout": HEARTBEAT_TIMEOUT,
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
            },
            queue={"config_sync_interval": 1, "retry_backoff_base": 0.2, "retry_backoff_max": 1},
        )
        self.process: ExecutorProcess | None = None
        self.history: list[ExecutorProcess] = []
        self.busy_until = 0.0  # a fault is in force on this server until then
        self.exit_codes: list[int] = []

    def start(self) -> None:
        self.process = ExecutorProcess(self.config, self.db, self.server_id)
        self.history.append(self.process)
        self.process.start(wait=False)

    @property
    def pid(self) -> int | None:
        return self.process.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.process.poll() is None

    def output_tail(self, lines: int = 30) -> str:
        return "\n".join("\n".join(p.output.splitlines()[-lines:]) for p in self.history[-2:])


class Supervised(Server):
    """`geventq run --processes 2` behind a fault proxy of its own."""

    def start(self) -> None:
        self.process = ExecutorProcess(self.config, self.db, self.server_id, extra_args=["--processes", "2"])
        self.history.append(self.process)
        self.process.start(wait=False)

    def wait_online(self, timeout: float = 30) -> None:
        wait_for(lambda: len(self.children()) == len(SUPERVISED), timeout, message="sv-1 and sv-2 online")

    def children(self) -> dict[str, int]:
        """server_id -> pid of the children registered online."""
        rows = self.db.query(
            "SELECT server_id, pid FROM servers WHERE server_id IN %s AND state = 'online'", (SUPERVISED,)
        )
        return {row["server_id"]: row["pid"] for row in rows}


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (the supervisor reaps its children at once)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# --- the run ---------------------------------------------------------------------


class Chaos:
    def __init__(
        self, minutes: float, seed: int, workdir: Path, tasks: int, own_mariadb: OwnMariaDB | None = None
    ):
        self.minutes = minutes
        self.tasks = tasks
        self.seed = seed
        self.rng = random.Random(seed)
        self.workdir = workdir
        name = f"geventq_chaos_{random.Random().getrandbits(40):010x}"
        self.own_mariadb = own_mariadb
        # The task tables; and the runs and faults, which survive a crash of the former.
        self.db = TestDatabase(name, port=own_mariadb.port) if own_mariadb else TestDatabase(name)
        self.records = TestDatabase(name) if own_mariadb else self.db
        self.fault_weights = dict(FAULT_WEIGHTS, **({"dbcrash": DBCRASH_WEIGHT} if own_mariadb else {}))
        # Every run applies these at least once, in a seeded order, before the
        # random draws: however few faults fit in the run, each class is tried.
        self.must = self.rng.sample(MUST_FAULTS, len(MUST_FAULTS))
        self.servers: dict[str, Server] = {}
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.faults: Counter = Counter()
        self.inserted = 0
        self.started = 0.0
        self.stopping_faults = False
        self.client: Client | None = None
        self.supervisor: Supervised | None = None

    # -- scheduling --
    def at(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (time.monotonic() + delay, next(self._seq), action))

    def run_events_until(self, deadline: float, done: Callable[[], bool] = lambda: False) -> bool:
        while time.monotonic() < deadline:
            if self.unless_crashed(done):
                return True
            if self.events and self.events[0][0] <= time.monotonic():
                _, _, action = heapq.heappop(self.events)
                try:
                    action()
                except DATABASE_DOWN:
                    if not self.database_crashed():
                        raise
                    self.at(RETRY_WHILE_DATABASE_DOWN, action)  # once the database is back
            else:
                time.sleep(0.05)
        return bool(self.unless_crashed(done))

    def unless_crashed(self, check: Callable[[], bool]) -> bool:
        """check(), or False while the database server is crashed on purpose."""
        try:
            return check()
        except DATABASE_DOWN:
            if not self.database_crashed():
                raise
            return False

    def database_crashed(self) -> bool:
        return self.own_mariadb is not None and not self.own_mariadb.alive()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def fault(
        self,
        kind: str,
        server: Server | None = None,
        detail: str = "",
        pid: int | None = None,
        at: datetime | None = None,
    ) -> None:
        self.faults[kind] += 1
        with self.records.connect() as conn, conn.cursor() as cur:
            log_fault(cur, kind, server.server_id if server else "", pid, detail, at)

    # -- set-up --
    def setup(self) -> None:
        self.db.create()
        if self.records is not self.db:
            self.records.create()
        with self.records.connect() as conn, conn.cursor() as cur:
            prepare(cur)
        with self.db.connect() as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM queue_configs")  # the sample queues: nothing to do here
        for name, (table, server_id, workers, timeout) in QUEUES.items():
            self.db.add_queue(
                name,
                table,
                server_id=server_id,
                max_workers=workers,
                scan_interval=1,
                task_timeout=timeout,
                **(LIMITS if table == LIMITED_TABLE else {}),
            )
        for name, columns in SCHEDULES.items():
            columns = {"name": name, "queue_name": "sched", "task_type": "chaos", "max_retries": 5, **columns}
            self.db.execute(
                f"INSERT INTO schedules ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                tuple(columns.values()),
            )
        add_optional_columns(self.db, CLIENT_TABLE)
        self.client = Client(port=self.db.port, database=self.db.name, pool_size=4)
        for server_id in SERVERS:
            self.servers[server_id] = Server(server_id, self.db, self.workdir)
        self.supervisor = Supervised(SUPERVISOR, self.db, self.workdir)
        for server in self.servers.values():
            server.start()
        self.supervisor.start()
        for server in self.servers.values():
            server.process.wait_online(30)
        self.supervisor.wait_online(30)

    # -- the fault phase --
    def run(self) -> bool:
        self.started = time.monotonic()
        duration = self.minutes * 60
        total = self.tasks
        first = total * 3 // 10
        self.inserted += insert_tasks(self.db, self.rng, first, self.client)
        self.say(
            f"seed {self.seed}: {first} tasks inserted, {total - first} more over the next "
            f"{duration * 0.85:.0f}s; faults until {duration:.0f}s"
        )
        self.schedule_inserts(total - first, duration * 0.85)
        self.at(2.0, self.next_fault)
        self.at(PROGRESS_EVERY, self.progress)
        self.run_events_until(self.started + duration)
        return self.heal_and_drain()

    def schedule_inserts(self, remaining: int, over: float) -> None:
        waves = max(1, int(over))
        per_wave = remaining // waves
        for wave in range(waves):
            count = per_wave if wave < waves - 1 else remaining - per_wave * (waves - 1)
            self.at(1.0 + wave * over / waves, lambda count=count: self.insert(count))

    def insert(self, count: int) -> None:
        self.inserted += insert_tasks(self.db, self.rng, count, self.client)

    def progress(self) -> None:
        counts = Counter()
        for table, *_ in QUEUES.values():
            for status, n in self.db.status_counts(table).items():
                counts[status] += n
        runs = self.records.scalar("SELECT COUNT(*) FROM executions")
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none"
        self.say(
            f"tasks {self.inserted}: "
            + ", ".join(f"{s.label} {counts[s]}" for s in Status)
            + f" | runs {runs} | faults {faults}"
        )
        if not self.stopping_faults or self.events:
            self.at(PROGRESS_EVERY, self.progress)

    # -- faults --
    def next_fault(self) -> None:
        if self.stopping_faults:
            return
        if self.must:
            kind = self.must.pop(0)
        else:
            kinds, weights = zip(*self.fault_weights.items(), strict=True)
            kind = self.rng.choices(kinds, weights)[0]
        getattr(self, f"fault_{kind}")()
        if kind in MUST_FAULTS and self.faults[kind] == 0 and kind not in self.must:
            self.must.append(kind)  # nothing to apply it to right now (no healthy server...): later
        self.at(self.rng.uniform(1.5, 4.0), self.next_fault)

    def healthy(self) -> list[Server]:
        now = time.monotonic()
        return [s for s in self.servers.values() if s.alive() and s.busy_until <= now]

    def pick_server(self) -> Server | None:
        """A healthy server, leaving at least one other healthy."""
        healthy = self.healthy()
        return self.rng.choice(healthy) if len(healthy) >= 2 else None

    def fault_sigkill(self) -> None:
        server = self.pick_server()
        if server is None:
            return
        downtime = self.rng.uniform(0.5, 4.0)
        server.busy_until = time.monotonic() + downtime + 3
        pid = server.pid
        server.process.kill()
        self.fault("sigkill", server, f"down for {downtime:.1f}s", pid)
        self.say(f"SIGKILL {server.server_id} (pid {pid}); restart in {downtime:.1f}s")
        self.at(downtime, lambda: self.restart(server))

    def fault_sigterm(self) -> None:
        server = self.pick_server()
        if server is None:
            return
        server.busy_until = time.monotonic() + 60
        pid = server.pid
        server.process.terminate()
        self.say(f"SIGTERM {server.server_id} (pid {pid})")
        self.at(0.2, lambda: self.reap(server, pid, time.monotonic() + 20))

    def reap(self, server: Server, pid: int, deadline: float) -> None:
        """Wait for a SIGTERMed server to exit (SIGKILL past the deadline), then restart it."""
        code = server.process.process.poll()
        if code is None and time.monotonic() < deadline:
            self.at(0.2, lambda: self.reap(server, pid, deadline))
            return
        if code is None:
            server.process.kill()
            self.fault("sigterm_hung_then_sigkill", server, "no exit 20 s after SIGTERM", pid)
            code = -9
        else:
            server.process.wait(1)
            self.fault("sigterm", server, f"exit code {code}", pid)
        server.exit_codes.append(code)
        self.say(f"{server.server_id} exited with {code} after SIGTERM; restarting")
        self.restart(server)

    def restart(self, server: Server) -> None:
        server.start()
        server.busy_until = time.monotonic() + 3

    def fault_blackhole(self) -> None:
        self.cut_off(self.pick_server(), "blackhole", self.rng.uniform(1.0, 10.0))

    def fault_refuse(self) -> None:
        server = self.pick_server()
        if server is not None:
            server.proxy.set_mode("refuse")
            server.proxy.set_mode("drop")  # drop cuts live ones, then is back to pass
            server.proxy.set_mode("refuse")
        self.cut_off(server, "refuse", self.rng.uniform(1.0, 8.0))

    def cut_off(self, server: Server | None, mode: str, seconds: float) -> None:
        if server is None:
            return
        server.busy_until = time.monotonic() + seconds + 3
        server.proxy.set_mode(mode)
        self.fault(mode, server, f"{seconds:.1f}s")
        self.say(f"{mode} {server.server_id}'s database traffic for {seconds:.1f}s")
        self.at(seconds, lambda: server.proxy.set_mode("pass"))

    def fault_dbcrash(self) -> None:
        """kill -9 the database server under every executor, restart it on the same datadir."""
        downtime = self.rng.uniform(0.5, 5.0)
        server = self.own_mariadb
        pid = server.process.pid
        server.kill()
        for each in self.servers.values():
            each.busy_until = max(each.busy_until, time.monotonic() + downtime + 3)
        self.fault("dbcrash", detail=f"mariadbd pid {pid} down for {downtime:.1f}s")
        self.say(f"SIGKILL mariadbd (pid {pid}); restart in {downtime:.1f}s")
        self.at(downtime, self.restart_database)

    def restart_database(self) -> None:
        if not self.own_mariadb.alive():
            self.own_mariadb.start()
            self.say(f"mariadbd restarted (crash recovery done, start {self.own_mariadb.starts})")

    def fault_drop(self) -> None:
        server = self.pick_server()
        if server is not None:
            server.proxy.set_mode("drop")
            self.fault("drop", server)
            self.say(f"drop {server.server_id}'s database connections")

    def fault_move(self) -> None:
        queue = self.rng.choice(list(QUEUES))
        default = QUEUES[queue][1]
        target = self.rng.choice([s for s in SERVERS if s != default])
        self.set_queue(queue, server_id=target)
        self.fault("move", detail=f"{queue} -> {target}")
        self.say(f"move queue {queue} to {target}")
        if default == "":
            self.at(self.rng.uniform(2.0, 6.0), lambda: self.set_queue(queue, server_id=""))

    def fault_resize(self) -> None:
        queue, size, seconds = self.rng.choice(list(QUEUES)), self.rng.randint(1, 60), self.rng.uniform(3, 8)
        self.set_queue(queue, max_workers=size)
        self.fault("resize", detail=f"{queue} max_workers={size} for {seconds:.1f}s")
        self.say(f"resize queue {queue} to {size} workers for {seconds:.1f}s")
        self.at(seconds, lambda: self.set_queue(queue, max_workers=QUEUES[queue][2]))

    def fault_disable(self) -> None:
        queue, seconds = self.rng.choice(list(QUEUES)), self.rng.uniform(1.0, 5.0)
        self.set_queue(queue, status=0)
        self.fault("disable", detail=f"{queue} for {seconds:.1f}s")
        self.say(f"disable queue {queue} for {seconds:.1f}s")
        self.at(seconds, lambda: self.set_queue(queue, status=1))

    def fault_cancel(self) -> None:
        """Cancel up to 20 pending tasks of one queue through geventq.Client."""
        queue = self.rng.choice([name for name in QUEUES if name != "sched"])
        table = QUEUES[queue][0]
        pending = self.db.query(
            f"SELECT id FROM `{table}` WHERE status = {Status.PENDING:d} ORDER BY id DESC LIMIT 20"
        )
        cancelled = 0
        for row in pending:
            try:
                self.client.cancel(queue, row["id"])
                cancelled += 1
            except TaskStateError:
                pass  # claimed (and maybe finished) since it was read
        self.fault("cancel", detail=f"{cancelled} in {table}")

    def fault_cancel_running(self) -> None:
        """Cancel up to 5 running tasks through a live server's admin API,
        whichever server runs them (one cut off from the database among them:
        then the request waits in task_cancels for it, or for its rescue)."""
        healthy = self.healthy()
        if not healthy:
            return
        server = self.rng.choice(healthy)
        table = self.rng.choice([table for table, *_ in QUEUES.values()])
        running = self.db.query(f"SELECT id FROM `{table}` WHERE status = {Status.RUNNING:d} LIMIT 5")
        answers = Counter()
        for row in running:
            status, _ = http(
                "POST",
                f"{server.process.admin_url}/admin/task/cancel?table={table}&id={row['id']}",
                timeout=5,
            )
            answers[status] += 1
        detail = f"{table} via {server.server_id}: " + ", ".join(
            f"{n}x{s}" for s, n in sorted(answers.items())
        )
        self.fault("cancel_running", server, detail)
        self.say(f"cancel {len(running)} running tasks of {table} through {server.server_id} ({detail})")

    def fault_limits(self) -> None:
        """Lower the limited queue's limits for a while, then restore them:
        running tasks are never stopped by it, and the checks hold the runs to
        the restored (highest) values."""
        cap, rate, seconds = self.rng.randint(1, 5), self.rng.randint(5, 30), self.rng.uniform(2.0, 6.0)
        self.set_queue("limited", global_max_workers=cap, rate_limit=rate)
        self.fault("limits", detail=f"global_max_workers={cap} rate_limit={rate} for {seconds:.1f}s")
        self.say(f"limits of queue limited down to {cap} workers, {rate} per 2 s for {seconds:.1f}s")
        restore = {key: LIMITS[key] for key in ("global_max_workers", "rate_limit")}
        self.at(seconds, lambda: self.set_queue("limited", **restore))

    def fault_schedule_run(self) -> None:
        healthy = self.healthy()
        if not healthy:
            return
        server, name = self.rng.choice(healthy), self.rng.choice(list(SCHEDULES))
        schedule_id = self.db.scalar("SELECT id FROM schedules WHERE name = %s", (name,))
        status, answer = http(
            "POST", f"{server.process.admin_url}/admin/schedule/run?id={schedule_id}", timeout=5
        )
        detail = f"{name} via {server.server_id}: {status}"
        if status == 201:
            detail += f" task {answer['data']['task_id']} at {answer['data']['fire_at']}"
        self.fault("schedule_run", server, detail)
        self.say(f"run schedule {name} now through {server.server_id} ({status})")

    # -- the supervisor's children --
    def pick_child(self) -> tuple[str, int] | None:
        """A child of the supervisor, while both are up and no child fault is recent."""
        supervisor = self.supervisor
        if supervisor is None or not supervisor.alive() or time.monotonic() < supervisor.busy_until:
            return None
        children = supervisor.children()
        if len(children) < len(SUPERVISED) or not all(pid_alive(pid) for pid in children.values()):
            return None
        supervisor.busy_until = time.monotonic() + CHILD_FAULT_GAP
        server_id = self.rng.choice(sorted(children))
        return server_id, children[server_id]

    def fault_child_kill(self) -> None:
        child = self.pick_child()
        if child is None:
            return
        server_id, pid = child
        # Frozen first, then the clock read, then killed: its runs ended by
        # `stopped_at`, and the supervisor (which rescues a dead child's tasks
        # at once, once it has reaped it) cannot act before the SIGKILL.
        # Logging when it was seen dead would come after that rescue's re-runs.
        os.kill(pid, signal.SIGSTOP)
        stopped_at = self.records.scalar("SELECT NOW(6)")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 10, message=f"{server_id} (pid {pid}) gone")
        self.fault("child_kill", self.supervisor, server_id, pid, at=stopped_at)
        self.say(f"SIGKILL child {server_id} (pid {pid}) of the supervisor")
        self.watch_replacement(server_id, pid, time.monotonic() + 30)

    def fault_child_stop(self) -> None:
        child = self.pick_child()
        if child is None:
            return
        server_id, pid = child
        seconds = LONG_CHILD_STOP if self.rng.random() < 0.5 else 1.0
        os.kill(pid, signal.SIGSTOP)
        # Read after the stop: nothing in the process ran later than this.
        stopped_at = self.records.scalar("SELECT NOW(6)")
        # No pid: a stopped process is not dead (the checker reads a fault's pid as a death).
        self.fault("child_stop", self.supervisor, f"{server_id} pid {pid} for {seconds:g}s")
        self.say(f"SIGSTOP child {server_id} (pid {pid}) for {seconds:g}s")
        self.at(seconds, lambda: self.resume_child(server_id, pid, seconds == LONG_CHILD_STOP, stopped_at))

    def resume_child(self, server_id: str, pid: int, long: bool, stopped_at: datetime) -> None:
        if not pid_alive(pid):
            # Killed while stopped (the supervisor's SIGKILL, never continued):
            # it did nothing after the stop, so that is when its runs ended.
            self.fault("child_stop_killed", self.supervisor, server_id, pid, at=stopped_at)
            self.watch_replacement(server_id, pid, time.monotonic() + 30)
            return
        os.kill(pid, signal.SIGCONT)
        if long and not self.stopping_faults:
            # stale for heartbeat_timeout + 5 s, yet the supervisor left it
            self.fault("child_not_replaced", self.supervisor, f"{server_id} pid {pid} never killed")

    def watch_replacement(self, server_id: str, old_pid: int, deadline: float) -> None:
        assert self.supervisor is not None
        new_pid = self.supervisor.children().get(server_id)
        if new_pid is not None and new_pid != old_pid:
            self.fault("child_replaced", self.supervisor, f"{server_id}: pid {old_pid} -> {new_pid}")
            self.say(f"{server_id} replaced: pid {old_pid} -> {new_pid}")
        elif time.monotonic() > deadline:
            self.fault("child_not_replaced", self.supervisor, f"{server_id} pid {old_pid}")
        else:
            self.at(0.5, lambda: self.watch_replacement(server_id, old_pid, deadline))

    def set_queue(self, queue: str, **values) -> None:
        assignments = ", ".join(f"{column} = %s" for column in values)
        self.db.execute(
            f"UPDATE queue_configs SET {assignments} WHERE queue_name = %s", (*values.values(), queue)
        )

    # -- the end --
    def heal_and_drain(self) -> bool:
        self.stopping_faults = True
        self.say("faults stop: pausing schedules, healing every proxy, restoring queues, restarting servers")
        self.db.execute("UPDATE schedules SET status = 0")
        if self.own_mariadb is not None:
            self.restart_database()  # first: the heals below write to it
        # Pending heals and restarts run now rather than later.
        while self.events:
            _, _, action = heapq.heappop(self.events)
            if action.__name__ not in ("progress", "next_fault"):
                action()
                time.sleep(0.01)  # a SIGTERMed server being reaped queues its next look
        for server in self.servers.values():
            server.proxy.set_mode("pass")
            if not server.alive():
                server.start()
        for server in self.servers.values():
            # Before its signal handler is in, a SIGTERM would kill a starting executor outright.
            server.process.wait_online(30)
        if self.supervisor is not None:
            self.supervisor.wait_online(30)
        for name, (table, server_id, workers, _) in QUEUES.items():
            limits = LIMITS if table == LIMITED_TABLE else {}
            self.set_queue(name, server_id=server_id, max_workers=workers, status=1, **limits)
        self.at(PROGRESS_EVERY, self.progress)
        drained = self.drain()
        self.events.clear()
        self.say(
            "drained"
            if drained
            else f"NOT drained: no task ended for {DRAIN_STALL:g}s, or {DRAIN_CAP:g}s passed"
        )
        return drained

    def drain(self) -> bool:
        """Wait until no task is pending or running, as long as tasks keep ending."""
        cap = time.monotonic() + max(DRAIN_CAP, self.minutes * 30)
        left = self.unfinished()
        while left:
            stall = min(cap, time.monotonic() + DRAIN_STALL)
            if not self.run_events_until(stall, lambda before=left: self.unfinished() < before):
                return False
            left = self.unfinished()
        return True

    def unfinished(self) -> int:
        return sum(
            self.db.scalar(
                f"SELECT COUNT(*) FROM `{table}` WHERE status IN ({Status.PENDING:d}, {Status.RUNNING:d})"
            )
            for table, *_ in QUEUES.values()
        )

    def stop_servers(self) -> dict[str, int]:
        everyone = [*self.servers.values(), *([self.supervisor] if self.supervisor else [])]
        for server in everyone:
            server.process.terminate()
        codes = {}
        for server in everyone:
            try:
                codes[server.server_id] = server.process.wait(30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                codes[server.server_id] = -9
        for server in everyone:
            server.proxy.stop()
        return codes

    def cleanup(self) -> None:
        if self.client is not None:
            self.client.close()
        for server in [*self.servers.values(), *([self.supervisor] if self.supervisor else [])]:
            if server.process is not None:
                server.process.stop()
            server.proxy.stop()


def schedule_summary(db: TestDatabase) -> str:
    """One line per schedule: its ledger rows by outcome (manual runs apart), and
    how late its fires were written, by the database clock."""
    rows = db.query(
        "SELECT s.name, f.outcome, MICROSECOND(f.fire_at) > 0 AS manual, COUNT(*) AS n, "
        "MAX(TIMESTAMPDIFF(MICROSECOND, f.fire_at, f.created_at - INTERVAL "
        "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) SECOND)) / 1e6 AS late "
        "FROM schedule_fires f JOIN schedules s ON s.id = f.schedule_id GROUP BY s.name, f.outcome, manual"
    )
    lines = ["schedules (fires by outcome; the latest a scheduled fire was written after its time):"]
    for name in SCHEDULES:
        mine = [row for row in rows if row["name"] == name]
        counts = ", ".join(
            f"{row['outcome']}{' (run now)' if row['manual'] else ''} {row['n']}" for row in mine
        )
        late = max((float(row["late"]) for row in mine if not row["manual"]), default=0.0)
        lines.append(f"  {name:<14} {counts or 'none'}; latest {late:.2f}s")
    return "\n".join(lines)


def start_cpu_hogs(count: int) -> list[subprocess.Popen]:
    """Busy loops at the same priority as the executors and the database."""
    return [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]


def stop_cpu_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the fault phase (default 1)")
    parser.add_argument(
        "--seed", type=int, default=None, help="fault schedule and task mix (default: random)"
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="tasks to insert (default: 20,000 for up to a minute, 15,000 a minute beyond)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and logs even on success")
    parser.add_argument(
        "--cpu-hog",
        type=int,
        default=0,
        metavar="N",
        help="run N busy-loop processes for the whole soak (a loaded machine)",
    )
    parser.add_argument(
        "--own-mariadb",
        action="store_true",
        help="task tables on a private MariaDB that the dbcrash fault kills and restarts",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="geventq-chaos-"))
    tasks = args.tasks or max(20_000, int(15_000 * args.minutes))
    began = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    hogs = start_cpu_hogs(args.cpu_hog)
    own = OwnMariaDB(workdir / "mariadb").install().start() if args.own_mariadb else None
    chaos = Chaos(args.minutes, seed, workdir, tasks, own)
    ok = False
    try:
        chaos.setup()
        drained = chaos.run()
        codes = chaos.stop_servers()
        with chaos.db.connect() as conn, chaos.records.connect() as records:
            report = check(conn, [table for table, *_ in QUEUES.values()], records, counters=True)
        sigterm_codes = Counter(code for server in chaos.servers.values() for code in server.exit_codes)
        print()
        print(
            f"chaos soak: {args.minutes:g} min of faults, seed {seed}, cpu hogs {args.cpu_hog}, "
            f"own mariadb: {'yes' if own else 'no'}, "
            f"{time.monotonic() - began:.0f}s in all, drained: {'yes' if drained else 'NO'}"
        )
        print(report.text())
        print(schedule_summary(chaos.db))
        print(
            f"exit codes after SIGTERM during the run: {dict(sigterm_codes) or 'none'}; at the end: {codes}"
        )
        clean_exits = all(code == 0 for code in codes.values()) and set(sigterm_codes) <= {0}
        ok = report.ok and drained and clean_exits
        print("RESULT:", "PASS" if ok else "FAIL")
        if not ok:
            for server in [*chaos.servers.values(), *([chaos.supervisor] if chaos.supervisor else [])]:
                print(f"--- last lines of {server.server_id}:\n{server.output_tail()}")
        return 0 if ok else 1
    finally:
        stop_cpu_hogs(hogs)
        chaos.cleanup()
        if ok and not args.keep:
            chaos.db.drop()
            if chaos.records is not chaos.db:
                chaos.records.drop()
            if own is not None:
                own.remove()
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            if own is not None:
                own.stop()
            print(
                f"kept: database {chaos.db.name}, logs in {workdir}"
                + (f" (task tables in {own.datadir}, port {own.port})" if own else "")
            )


if __name__ == "__main__":
    sys.exit(main())

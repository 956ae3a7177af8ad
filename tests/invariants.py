"""The promises geventq makes, checked against what the tables say happened.

Reads the task tables, the `executions` table the `chaos` handler fills (one
row per handler run, with start and finish on the database clock and how the
run ended) and the `chaos_faults` table where the fault driver logs each fault
(for a killed process: its pid and the moment it was seen dead, on the
database clock). All times are the database's, so no two clocks are compared;
what is assumed is only that the servers' clocks run at the same rate (the
lease is measured on each server's monotonic clock against a heartbeat
timeout measured on the database's).

Words used below. An *attempt* of a task is one value of its retry_count: a
claim takes the task at retry_count k and the attempt ends when its outcome
is written. An attempt is *consumed* (retry_count + 1, or failed for good)
either by the handler failing (`error`, `timeout`), or by being *lost*: its
server died or lost its lease (rescue), restarted (own orphans), or never got
the reply of the claim (reconcile). A handler run that ended `ok` whose
outcome never reached the table (the server died first) is lost too: that is
at-least-once delivery. A shutdown that hands a task back (SIGTERM past
shutdown_timeout) does not consume the attempt: the same attempt runs again.

The invariants:

- terminal: every task is done (2), failed (3) or cancelled (4).
- none_running: no task is left in status 1.
- retry_count: the final retry_count R agrees with the runs, with
  max_retries M: R <= M + 1 and no run has a retry_count above R; done means
  R <= M and a run at R ended ok; failed means either R == M and the last run
  at R failed (error or timeout), or R == M + 1 and the last attempt was lost
  (error_msg says how). And per kind: fast and slow never fail by themselves,
  fail and timeout never succeed, a flaky task succeeds exactly from attempt
  succeed_on; every run that ended by itself ended as its kind says.
  Without faults there are no lost attempts, so runs == R + 1. A run of
  any kind that ended `timeout` after really running its queue's
  task_timeout from its claim is the product stopping a handler that was too
  slow (on a machine so loaded that a 1 s sleep took 5 s): accepted, and it
  may fail the task; one that ended `timeout` sooner is a violation.
- attempt_once: no attempt (task, retry_count) ran twice, except after a
  shutdown handed it back (the earlier run ended `shutdown`).
- no_overlap: the runs of one task, by start, never overlap: each ended
  before the next began. A run whose start record never landed (stopped
  while its handler waited to write it, before doing anything) is left out
  of this and in_order. A run without finished_at ended when its process
  was seen dead (a fault row with its pid); with neither, it counts as never
  ended, so any later run of the task is an overlap.
- in_order: runs of one task start in retry_count order: a stale attempt
  never starts after a newer one.
- dedupe_once: in a table with a dedupe_key column, runs of two different
  tasks with the same key never overlap: while one task holds the key
  (pending or running) no other is created with it, so the next one's runs
  begin after the first one's last run ended.

And for recurring tasks (the `schedules` and `schedule_fires` tables):

- one_task_per_fire: every `enqueued` ledger row names exactly one task, in
  its task_table, whose params carry that schedule's name and fire time;
  every task whose params carry `_schedule` is named by exactly one ledger
  row; no two tasks carry the same (schedule, fire time); `missed` and
  `skipped_overlap` rows name no task.
- no_fire_gap: between two consecutive fires in a schedule's ledger, every
  fire time the cadence skipped was late (more than misfire_grace_seconds
  old) when the later row was written, so only a misfire policy can leave a
  gap; and no fire was written before its time. Manual runs (recorded at the
  moment they were asked for, never a whole second) are left out.

And for limits and cancellation (queue_configs' global_max_workers,
key_max_workers with the table's concurrency_key, rate_limit/rate_period;
task_cancels and the runs that ended `cancelled`):

- global_cap: the runs of a queue's table, each from its claim (claimed_at,
  the claim's own database clock) to its end, never overlap more than
  global_max_workers deep. A run lies inside its row's running time (the row
  is claimed before the handler starts, and the run ends before its outcome
  is written or its process is seen dead, which is before any rescue), so
  this is implied by the promise itself: running rows never exceed the cap.
- key_cap: the same per concurrency_key, against key_max_workers.
- rate_limit: no window of rate_period seconds holds more than rate_limit
  claims (counted by claimed_at; every attempt counts, retries included).
- outcome_counts (the soak asks for it): the operator view's per-minute
  counters add up to the rows, done, failed and cancelled per table.
- cancel_final: a run that ended `cancelled` (its handler stopped by a
  cancel request) belongs to a task that ended cancelled (4), and no run of
  that task began after it.

`python -m tests.invariants --database NAME [--tables a,b]` checks a
database; it exits 1 and prints the offending rows when any invariant breaks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pymysql

from geventq.attempts import Status
from geventq.cadence import Cadence
from geventq.errors import InvalidSchedule

NEVER = datetime.max
LOST_MESSAGES = ("stopped heartbeating", "restarted while running", "was lost before it started")
EXPECTED_ERRORS = {"error": "RuntimeError", "timeout": "timed out"}

EXECUTIONS_COLUMNS = (
    "ALTER TABLE executions ADD COLUMN IF NOT EXISTS ended VARCHAR(40) NULL, "
    "ADD COLUMN IF NOT EXISTS finish_order TINYINT NOT NULL DEFAULT 0, "
    "ADD COLUMN IF NOT EXISTS began TINYINT NOT NULL DEFAULT 1, "
    "ADD COLUMN IF NOT EXISTS run_id CHAR(32) NULL, ADD UNIQUE INDEX IF NOT EXISTS ux_run_id (run_id), "
    "ADD COLUMN IF NOT EXISTS claimed_at DATETIME(3) NULL"
)
FAULTS_DDL = """CREATE TABLE IF NOT EXISTS chaos_faults (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  kind VARCHAR(40) NOT NULL,
  server_id VARCHAR(50) NOT NULL DEFAULT '',
  pid INT NULL,
  at DATETIME(6) NOT NULL,
  detail VARCHAR(255) NOT NULL DEFAULT ''
)"""


def prepare(cur) -> None:
    """Give a test database what the chaos handler and the fault log need
    (the `executions` table itself comes from tests.support)."""
    cur.execute(EXECUTIONS_COLUMNS)
    cur.execute(FAULTS_DDL)


def log_fault(
    cur, kind: str, server_id: str = "", pid: int | None = None, detail: str = "", at: datetime | None = None
) -> None:
    """A fault, at `at` or now (database clock). A row with a pid says that
    process was dead (had stopped doing anything) by `at`."""
    cur.execute(
        "INSERT INTO chaos_faults (kind, server_id, pid, at, detail) "
        "VALUES (%s, %s, %s, COALESCE(%s, NOW(6)), %s)",
        (kind, server_id, pid, at, detail[:255]),
    )


@dataclass
class Result:
    name: str
    violations: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Report:
    results: list[Result]
    tasks_by_status: dict[str, Counter]
    runs_by_end: Counter
    faults: Counter
    lost_attempts: int
    repeated_ok_runs: int
    total_tasks: int
    total_runs: int

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    def text(self, limit: int = 10) -> str:
        lines = [f"tasks: {self.total_tasks}"]
        for table, counts in self.tasks_by_status.items():
            lines.append(f"  {table}: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
        lines.append(
            f"handler runs: {self.total_runs} ("
            + ", ".join(f"{end} {n}" for end, n in self.runs_by_end.most_common())
            + ")"
        )
        lines.append(
            f"lost attempts (rescued, reconciled, restarted): {self.lost_attempts}; "
            f"runs that ended ok but ran again (outcome lost): {self.repeated_ok_runs}"
        )
        lines.append(
            "faults: " + (", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())) or "none")
        )
        lines.append("invariants:")
        for result in self.results:
            verdict = "ok" if result.ok else f"BROKEN ({len(result.violations)})"
            lines.append(f"  {result.name:<18} {verdict}")
            lines.extend(f"      {violation}" for violation in result.violations[:limit])
        return "\n".join(lines)


STATUS = {status: status.label for status in Status}


def max_overlap(intervals) -> int:
    """Largest number of (start, end) intervals open at one instant (one that
    ends at the instant another starts does not overlap it)."""
    events = sorted(
        [(start, 1) for start, end in intervals] + [(end, -1) for start, end in intervals],
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def most_in_any_window(times, seconds: float) -> int:
    """The most of `times` inside one window [t, t + seconds) (a start at the
    window's end is the next window's)."""
    times, most, first = sorted(times), 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= timedelta(seconds=seconds):
            first += 1
        most = max(most, last - first + 1)
    return most


def check(conn, tables: list[str], records=None, *, counters: bool = False) -> Report:
    """Read everything once, check every invariant, count by fault. The runs
    and faults are read from `records` when given (a soak whose task tables
    live on a database server it crashes keeps them on another). `counters`
    adds outcome_counts, for histories where every outcome went through
    geventq (rows finished by hand-written SQL are not counted, by design)."""
    with (records or conn).cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT kind, pid, at FROM chaos_faults")
        faults = list(cur.fetchall())
        cur.execute(
            "SELECT table_name, task_id, retry_count, server_id, pid, claimed_at, started_at, finished_at, "
            "ended, began FROM executions ORDER BY started_at, id"
        )
        runs_by_task: dict[tuple[str, int], list[dict]] = defaultdict(list)
        all_runs = list(cur.fetchall())
        for run in all_runs:
            runs_by_task[(run["table_name"], run["task_id"])].append(run)
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        tasks = []
        for table in tables:
            cur.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name = %s AND column_name = 'dedupe_key'",
                (table,),
            )
            dedupe = "dedupe_key" if cur.fetchone() else "NULL AS dedupe_key"
            cur.execute(
                f"SELECT id, task_type, task_params, status, retry_count, max_retries, error_msg, {dedupe} "
                f"FROM `{table}`"
            )
            tasks.extend({**row, "table": table} for row in cur.fetchall())
    died_at = {row["pid"]: row["at"] for row in faults if row["pid"] is not None}
    checker = _Checker(died_at, _task_timeouts(conn))
    for task in tasks:
        checker.check_task(task, runs_by_task.get((task["table"], task["id"]), []))
    checker.check_dedupe(tasks, runs_by_task)
    by_status: dict[str, Counter] = {}
    for task in tasks:
        by_status.setdefault(task["table"], Counter())[STATUS.get(task["status"], task["status"])] += 1
    return Report(
        results=[
            *checker.results.values(),
            *check_limits(conn, tasks, runs_by_task, checker.end_of),
            *([check_outcome_counts(conn, tasks, tables)] if counters else []),
            *check_schedules(conn),
            check_children(faults),
        ],
        tasks_by_status=by_status,
        runs_by_end=Counter(run["ended"] or "(no finish: process died)" for run in all_runs),
        faults=Counter(row["kind"] for row in faults),
        lost_attempts=checker.lost_attempts,
        repeated_ok_runs=checker.repeated_ok_runs,
        total_tasks=len(tasks),
        total_runs=len(all_runs),
    )


class _Checker:
    NAMES = (
        "terminal",
        "none_running",
        "retry_count",
        "attempt_once",
        "no_overlap",
        "in_order",
        "dedupe_once",
    )

    def __init__(self, died_at: dict[int, datetime], task_timeouts: dict[str, float] | None = None):
        self.died_at = died_at
        # table -> its queue's task_timeout (0: none): a run of any kind that
        # really lasted that long from its claim may end "timeout" (a machine
        # so loaded that a 1 s sleep took 5 s); one that ended sooner may not.
        self.task_timeouts = task_timeouts or {}
        self.results = {name: Result(name) for name in self.NAMES}
        self.lost_attempts = 0
        self.repeated_ok_runs = 0

    def flag(self, name: str, task: dict, why: str, runs: list[dict] | None = None) -> None:
        row = {key: task[key] for key in ("table", "id", "status", "retry_count", "max_retries")}
        row["params"] = task["task_params"]
        row["error_msg"] = (task["error_msg"] or "")[:120]
        detail = f"{why}: task {row}"
        if runs:
            detail += " runs " + json.dumps([_brief(run) for run in runs], default=str)
        self.results[name].violations.append(detail)

    def end_of(self, run: dict) -> datetime:
        if run["finished_at"] is not None:
            return run["finished_at"]
        return self.died_at.get(run["pid"], NEVER)

    def check_task(self, task: dict, runs: list[dict]) -> None:
        status = task["status"]
        if status not in (Status.DONE, Status.FAILED, Status.CANCELLED):
            self.flag("terminal", task, "not terminal", runs)
        if status == Status.RUNNING:
            self.flag("none_running", task, "left running", runs)
        self.check_overlap_and_order(task, runs)
        self.check_attempts(task, runs)
        if status in (Status.DONE, Status.FAILED):
            self.check_retry_count(task, runs)

    def check_overlap_and_order(self, task: dict, runs: list[dict]) -> None:
        # A run whose start never reached the table was stopped before its
        # handler did anything (the chaos handler behaves only after its start
        # is written); its recorded start is only when its finish landed.
        runs = [run for run in runs if run.get("began", 1)]
        # `longest`: of the runs started so far, the one that ended last.
        longest = None
        for earlier, later in itertools.pairwise(runs):
            if longest is None or self.end_of(earlier) > self.end_of(longest):
                longest = earlier
            if self.end_of(longest) > later["started_at"]:
                self.flag("no_overlap", task, "two runs at once", [longest, later])
            if later["retry_count"] < earlier["retry_count"]:
                self.flag("in_order", task, "an older attempt started after a newer one", [earlier, later])

    def check_dedupe(self, tasks: list[dict], runs_by_task: dict[tuple[str, int], list[dict]]) -> None:
        """Runs of different tasks sharing a dedupe_key never overlap."""
        holders: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for task in tasks:
            if task.get("dedupe_key") is not None:
                holders[(task["table"], task["dedupe_key"])].append(task)
        for same_key in holders.values():
            if len(same_key) < 2:
                continue
            runs = sorted(
                (
                    (run, task)
                    for task in same_key
                    for run in runs_by_task.get((task["table"], task["id"]), [])
                    if run.get("began", 1)
                ),
                key=lambda pair: pair[0]["started_at"],
            )
            latest = None  # (end, run, task) of the run that ends last so far
            for run, task in runs:
                if latest is not None and latest[2]["id"] != task["id"] and latest[0] > run["started_at"]:
                    key = task["dedupe_key"]
                    why = f"tasks {latest[2]['id']} and {task['id']} share dedupe_key {key!r} and ran at once"
                    self.flag("dedupe_once", task, why, [latest[1], run])
                end = self.end_of(run)
                if latest is None or end > latest[0]:
                    latest = (end, run, task)

    def check_attempts(self, task: dict, runs: list[dict]) -> None:
        by_attempt: dict[int, list[dict]] = defaultdict(list)
        for run in runs:
            by_attempt[run["retry_count"]].append(run)
        for same in by_attempt.values():
            if any(run["ended"] != "shutdown" for run in same[:-1]):
                self.flag("attempt_once", task, "one attempt ran twice", same)

    def check_retry_count(self, task: dict, runs: list[dict]) -> None:
        retries, limit, status = task["retry_count"], task["max_retries"], task["status"]
        params = json.loads(task["task_params"] or "{}")
        kind = params.get("kind", "fast")
        last = [run for run in runs if run["retry_count"] == retries][-1:]
        last_end = last[0]["ended"] if last else None
        problems = []
        if retries > limit + 1:
            problems.append("retry_count above max_retries + 1")
        if any(run["retry_count"] > retries for run in runs):
            problems.append("a run with a retry_count above the task's")
        lost_last = False
        if status == Status.DONE:
            if retries > limit:
                problems.append("done with retry_count above max_retries")
            if last_end != "ok":
                problems.append("done, but no run of the last attempt ended ok")
        elif retries == limit + 1:
            lost_last = True
            if not any(text in (task["error_msg"] or "") for text in LOST_MESSAGES):
                problems.append("failed one past max_retries, but error_msg names no lost attempt")
        elif retries != limit or last_end not in EXPECTED_ERRORS:
            problems.append("failed before max_retries, or its last run did not fail")
        elif EXPECTED_ERRORS[last_end] not in (task["error_msg"] or ""):
            problems.append(f"error_msg does not say how the last run ended ({last_end})")
        timeout = self.task_timeouts.get(task["table"], 0.0)
        judged = [
            {**run, "ended": "overran"} if kind != "timeout" and _overran(run, timeout) else run
            for run in runs
        ]
        overran_last = bool(judged) and judged[-1]["ended"] == "overran"
        problems += self.kind_problems(kind, params, status, lost_last or overran_last, judged)
        if problems:
            self.flag("retry_count", task, "; ".join(problems), runs)
        self.count_lost(retries, runs)

    @staticmethod
    def kind_problems(kind: str, params: dict, status: int, lost_last: bool, runs: list[dict]) -> list[str]:
        """Each run that ended by itself ended as its kind says."""
        succeed_on = int(params.get("succeed_on", 2))
        expected = {
            "fast": lambda run: "ok",
            "slow": lambda run: "ok",
            "exit": lambda run: "ok",
            "cpu": lambda run: "ok",
            "cpu_thread": lambda run: "ok",
            "fail": lambda run: "error",
            "timeout": lambda run: "timeout",
            "flaky": lambda run: "ok" if run["retry_count"] + 1 >= succeed_on else "error",
        }.get(kind)
        if expected is None:
            return [f"unknown kind {kind!r}"]
        problems = [
            f"run at retry_count {run['retry_count']} ended {run['ended']}, "
            f"a {kind} run should end {expected(run)}"
            for run in runs
            if run["ended"] in ("ok", "error", "timeout") and run["ended"] != expected(run)
        ]
        never_fails = kind in ("fast", "slow", "exit", "cpu", "cpu_thread")
        if status == Status.FAILED and not lost_last and never_fails:
            problems.append(f"a {kind} task failed without a lost attempt")
        return problems

    def count_lost(self, consumed: int, runs: list[dict]) -> None:
        """Attempts below the final retry_count not consumed by a failing run."""
        failed = {run["retry_count"] for run in runs if run["ended"] in EXPECTED_ERRORS}
        self.lost_attempts += sum(1 for attempt in range(consumed) if attempt not in failed)
        self.repeated_ok_runs += sum(
            1 for run in runs if run["ended"] == "ok" and run["retry_count"] < consumed
        )


def _task_timeouts(conn) -> dict[str, float]:
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT table_name, task_timeout FROM queue_configs")
        return {row["table_name"]: float(row["task_timeout"] or 0) for row in cur.fetchall()}


# The clocks of a run's claim (DATETIME(3)) and finish (DATETIME(6)) differ in precision.
TIMEOUT_TOLERANCE = timedelta(milliseconds=50)


def _overran(run: dict, timeout: float) -> bool:
    """Ended "timeout" after really running task_timeout from its claim: the
    product timing out a handler that was too slow, whatever its kind."""
    if (
        run["ended"] != "timeout"
        or not timeout
        or run.get("claimed_at") is None
        or run["finished_at"] is None
    ):
        return False
    return run["finished_at"] - run["claimed_at"] >= timedelta(seconds=timeout) - TIMEOUT_TOLERANCE


def check_outcome_counts(conn, tasks: list[dict], tables: list[str]) -> Result:
    """outcome_counts: the per-minute counters the operator's view reads
    (queue_minute_counts, written in each outcome's own transaction) add up
    to the rows: done, failed and cancelled per table."""
    result = Result("outcome_counts")
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(
            "SELECT table_name, SUM(done) AS done, SUM(failed) AS failed, SUM(cancelled) AS cancelled "
            "FROM queue_minute_counts GROUP BY table_name"
        )
        counted = {row["table_name"]: row for row in cur.fetchall()}
    for table in tables:
        rows = Counter(task["status"] for task in tasks if task["table"] == table)
        for status in (Status.DONE, Status.FAILED, Status.CANCELLED):
            recorded = int((counted.get(table) or {}).get(status.label) or 0)
            if recorded != rows[status]:
                result.violations.append(
                    f"{table}: {rows[status]} {status.label} rows, counters say {recorded}"
                )
    return result


# --- limits and cancellation -----------------------------------------------------------

LIMIT_COLUMNS = "table_name, global_max_workers, key_max_workers, rate_limit, rate_period"


def check_limits(conn, tasks: list[dict], runs_by_task: dict, end_of) -> list[Result]:
    results = {name: Result(name) for name in ("global_cap", "key_cap", "rate_limit", "cancel_final")}
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(
            f"SELECT {LIMIT_COLUMNS} FROM queue_configs "
            "WHERE global_max_workers > 0 OR key_max_workers > 0 OR rate_limit > 0"
        )
        limited = list(cur.fetchall())
        keys = {}
        for queue in limited:
            if queue["key_max_workers"] > 0:
                keys.update(_concurrency_keys(cur, queue["table_name"]))
    for queue in limited:
        table = queue["table_name"]
        runs = [
            run
            for (run_table, _), task_runs in runs_by_task.items()
            if run_table == table
            for run in task_runs
            if run["claimed_at"] is not None
        ]
        _check_caps(results, queue, runs, keys, end_of)
        rate, period = queue["rate_limit"], queue["rate_period"]
        if rate > 0:
            most = most_in_any_window([run["claimed_at"] for run in runs], period)
            if most > rate:
                results["rate_limit"].violations.append(
                    f"{table}: {most} claims in one window of {period} s, the limit is {rate}"
                )
    _check_cancel_final(results["cancel_final"], tasks, runs_by_task)
    return list(results.values())


def _concurrency_keys(cur, table: str) -> dict[tuple[str, int], str | None]:
    cur.execute(f"SELECT id, concurrency_key FROM {_quoted(table)}")
    return {(table, row["id"]): row["concurrency_key"] for row in cur.fetchall()}


def _check_caps(results: dict[str, Result], queue: dict, runs: list[dict], keys: dict, end_of) -> None:
    table, cap, key_cap = queue["table_name"], queue["global_max_workers"], queue["key_max_workers"]
    spans = [(run["claimed_at"], end_of(run)) for run in runs]
    if cap > 0 and (peak := max_overlap(spans)) > cap:
        results["global_cap"].violations.append(f"{table}: {peak} runs at once, global_max_workers is {cap}")
    if key_cap > 0:
        by_key: dict[str, list] = defaultdict(list)
        for run, span in zip(runs, spans, strict=True):
            key = keys.get((table, run["task_id"]))
            if key is not None:
                by_key[key].append(span)
        for key, key_spans in by_key.items():
            if (peak := max_overlap(key_spans)) > key_cap:
                results["key_cap"].violations.append(
                    f"{table}: {peak} runs of key {key!r} at once, key_max_workers is {key_cap}"
                )


def _check_cancel_final(result: Result, tasks: list[dict], runs_by_task: dict) -> None:
    status_of = {(task["table"], task["id"]): task["status"] for task in tasks}
    for key, runs in runs_by_task.items():
        stopped = [run for run in runs if run["ended"] == "cancelled"]
        if not stopped:
            continue
        if status_of.get(key) != Status.CANCELLED:
            result.violations.append(
                f"{key}: a run stopped by a cancel, but the task ended {status_of.get(key)}"
            )
        later = [run for run in runs if run["started_at"] > stopped[0]["started_at"] and run.get("began", 1)]
        if later:
            result.violations.append(
                f"{key}: ran again after a cancel stopped it: {[_brief(r) for r in later]}"
            )


# --- recurring tasks ------------------------------------------------------------------

EARLY_TOLERANCE = 0.01  # seconds: a manual run is recorded at its request's millisecond


# Fault kinds of the soak's supervisor (tests.chaos): a child killed, or stopped
# past heartbeat_timeout and so killed by the supervisor, must come back.
CHILD_GONE = ("child_kill", "child_stop_killed")


def check_children(faults: list[dict]) -> Result:
    """children_replaced: every supervised child that died was replaced by a
    new process under its server_id (the soak logs child_replaced when it sees
    one online, child_not_replaced when none came within 30 s)."""
    result = Result("children_replaced")
    kinds = Counter(row["kind"] for row in faults)
    gone, replaced = sum(kinds[kind] for kind in CHILD_GONE), kinds["child_replaced"]
    if kinds["child_not_replaced"]:
        result.violations.append(f"{kinds['child_not_replaced']} children were not replaced within 30 s")
    if replaced != gone:
        result.violations.append(f"{gone} children died, {replaced} were replaced")
    return result


def check_schedules(conn) -> list[Result]:
    """one_task_per_fire and no_fire_gap over every schedule's ledger (see
    the module's docstring). Assumes the cadences were not edited meanwhile."""
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute("SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), NOW()) AS utc_offset")
        offset = cur.fetchone()["utc_offset"]
        cur.execute("SELECT * FROM schedules")
        schedules = {row["id"]: row for row in cur.fetchall()}
        cur.execute("SELECT * FROM schedule_fires ORDER BY schedule_id, fire_at")
        fires = list(cur.fetchall())
        tasks = {}
        for table in sorted({fire["task_table"] for fire in fires}):
            cur.execute(
                f"SELECT id, task_params FROM {_quoted(table)} WHERE task_params LIKE %s", ('%"_schedule"%',)
            )
            for row in cur.fetchall():
                tasks[(table, row["id"])] = _schedule_of(row["task_params"])
    once, gaps = Result("one_task_per_fire"), Result("no_fire_gap")
    _check_fire_tasks(once, schedules, fires, tasks)
    by_schedule: dict[int, list[dict]] = defaultdict(list)
    for fire in fires:
        by_schedule[fire["schedule_id"]].append(fire)
    for schedule_id, ledger in by_schedule.items():
        if schedule_id in schedules:
            _check_gaps(gaps, schedules[schedule_id], ledger, offset)
    return [once, gaps]


def _quoted(table: str) -> str:
    return ".".join(f"`{part}`" for part in table.split("."))


def _schedule_of(params: str | None) -> tuple[str, str] | None:
    try:
        mark = json.loads(params or "{}").get("_schedule")
    except (ValueError, AttributeError):
        return None
    return (mark.get("name"), mark.get("fire_at")) if isinstance(mark, dict) else None


def _fire_text(fire_at: datetime) -> str:
    return fire_at.strftime("%Y-%m-%d %H:%M:%S.") + f"{fire_at.microsecond // 1000:03d}"


def _check_fire_tasks(result: Result, schedules: dict, fires: list[dict], tasks: dict) -> None:
    named: Counter = Counter()
    for fire in fires:
        where = f"schedule {fire['schedule_id']} fire {_fire_text(fire['fire_at'])} ({fire['outcome']})"
        if fire["outcome"] != "enqueued":
            if fire["task_id"] is not None:
                result.violations.append(f"{where} names task {fire['task_id']}")
            continue
        key = (fire["task_table"], fire["task_id"])
        named[key] += 1
        if key not in tasks:
            result.violations.append(f"{where}: task {key} does not exist or carries no _schedule")
            continue
        name = schedules.get(fire["schedule_id"], {}).get("name")
        if name is not None and tasks[key] != (name, _fire_text(fire["fire_at"])):
            result.violations.append(f"{where}: task {key} carries {tasks[key]}")
    for key, count in named.items():
        if count > 1:
            result.violations.append(f"task {key} is named by {count} ledger rows")
    for key, mark in tasks.items():
        if named[key] == 0:
            result.violations.append(f"task {key} carries _schedule {mark} but no ledger row names it")
    for mark, count in Counter(mark for mark in tasks.values() if mark is not None).items():
        if count > 1:
            result.violations.append(f"{count} tasks carry _schedule {mark}")


def _check_gaps(result: Result, schedule: dict, ledger: list[dict], offset: int) -> None:
    try:
        cadence = Cadence.of(schedule["cron"], schedule["interval_seconds"], schedule["timezone"])
    except InvalidSchedule as error:
        result.violations.append(f"schedule {schedule['name']}: {error}")
        return
    grace = schedule["misfire_grace_seconds"]
    previous = None
    for fire in ledger:
        written = fire["created_at"] - timedelta(seconds=offset)  # UTC, like fire_at
        if (fire["fire_at"] - written).total_seconds() > EARLY_TOLERANCE:
            result.violations.append(
                f"schedule {schedule['name']}: fire {_fire_text(fire['fire_at'])} written early, at {written}"
            )
        if fire["fire_at"].microsecond:  # a manual run, off the cadence
            continue
        if previous is not None:
            skipped = cadence.last_before(fire["fire_at"], previous + timedelta(microseconds=1))
            if skipped is not None and (written - skipped).total_seconds() <= grace:
                result.violations.append(
                    f"schedule {schedule['name']}: no fire at {_fire_text(skipped)} although it was "
                    f"on time (grace {grace}s) when {_fire_text(fire['fire_at'])} was written at {written}"
                )
        previous = fire["fire_at"]


def _brief(run: dict) -> dict:
    keys = ("retry_count", "server_id", "pid", "started_at", "finished_at", "ended", "began")
    return {key: run[key] for key in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.invariants", description=__doc__.split("\n")[0])
    parser.add_argument("--database", required=True)
    parser.add_argument("--tables", help="comma-separated task tables (default: every queue's table)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    args = parser.parse_args(argv)
    conn = pymysql.connect(
        host=args.host, port=args.port, user="root", password="", database=args.database, autocommit=True
    )
    with conn:
        if args.tables:
            tables = args.tables.split(",")
        else:
            with conn.cursor() as cur:
                cur.execute("SELECT table_name FROM queue_configs")
                tables = [row[0] for row in cur.fetchall()]
        report = check(conn, tables)
    print(report.text(limit=50))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

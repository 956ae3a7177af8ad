"""Test handlers with named behaviours. Every run is recorded in the test
database's `executions` table (one row per attempt, with start and finish
times on the database clock) so tests can count runs and overlaps."""

import os
import time

import gevent

from geventq import PermanentFailure, RateLimited, task_handler


def _started(ctx) -> int:
    with ctx.db.cursor() as cur:
        cur.execute(
            "INSERT INTO executions (table_name, task_id, retry_count, server_id, pid, started_at, "
            "claimed_at) VALUES (%s, %s, %s, %s, %s, NOW(6), %s)",
            (ctx.table_name, ctx.task_id, ctx.retry_count, ctx.server_id, os.getpid(), ctx.started_at),
        )
        return cur.lastrowid


def _finished(ctx, execution_id: int) -> None:
    with ctx.db.cursor() as cur:
        cur.execute("UPDATE executions SET finished_at = NOW(6) WHERE id = %s", (execution_id,))


@task_handler("noop")
def noop(ctx):
    pass


@task_handler("record")
def record(ctx):
    """Runs for params.seconds (default 0), recording start and finish."""
    execution = _started(ctx)
    seconds = float(ctx.params.get("seconds", 0))
    if seconds:
        gevent.sleep(seconds)
    ctx.log.info("recorded run {}", execution)
    _finished(ctx, execution)


@task_handler("fail")
def fail(ctx):
    _finished(ctx, _started(ctx))
    raise RuntimeError(ctx.params.get("message", "failing on purpose"))


@task_handler("flaky")
def flaky(ctx):
    """Fails until the attempt numbered params.succeed_on (1-based)."""
    _finished(ctx, _started(ctx))
    if ctx.attempt < int(ctx.params.get("succeed_on", 2)):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")


@task_handler("permanent")
def permanent(ctx):
    raise PermanentFailure("this task can never succeed")


@task_handler("hang")
def hang(ctx):
    """Sleeps params.seconds (default 3600) without recording a finish."""
    execution = _started(ctx)
    gevent.sleep(float(ctx.params.get("seconds", 3600)))
    _finished(ctx, execution)


@task_handler("exit")
def exit_process(ctx):
    """Kills its own process, as a crashing extension module would."""
    _started(ctx)
    os._exit(int(ctx.params.get("code", 1)))


@task_handler("cpu")
def cpu(ctx):
    """Blocks the hub with a CPU loop that never yields for params.seconds."""
    execution = _started(ctx)
    deadline = time.monotonic() + float(ctx.params.get("seconds", 2))
    while time.monotonic() < deadline:
        pass
    _finished(ctx, execution)


@task_handler("cpu_in_thread")
def cpu_in_thread(ctx):
    execution = _started(ctx)
    ctx.run_in_thread(sum, range(int(ctx.params.get("n", 1_000_000))))
    _finished(ctx, execution)


@task_handler("touch")
def touch(ctx):
    """Appends one line per run to params.file, touching no database: for
    tests that kill the executor's connections."""
    with open(ctx.params["file"], "a") as runs:
        runs.write(f"{ctx.table_name} {ctx.task_id} {ctx.retry_count} {ctx.server_id}\n")
    seconds = float(ctx.params.get("seconds", 0))
    if seconds:
        gevent.sleep(seconds)


@task_handler("rate_limited")
def rate_limited(ctx):
    """Its first run raises RateLimited(params.seconds); later runs succeed."""
    execution = _started(ctx)
    _finished(ctx, execution)
    with ctx.db.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) AS n FROM executions WHERE table_name = %s AND task_id = %s",
            (ctx.table_name, ctx.task_id),
        )
        if cur.fetchone()["n"] == 1:
            raise RateLimited(float(ctx.params.get("seconds", 2)), "the partner API said 429")


@task_handler("scheduled")
def scheduled(ctx):
    """For tasks a schedule created: fails for good unless ctx.schedule is the
    `_schedule` the task carries; records its run; sleeps params.seconds."""
    execution = _started(ctx)
    if ctx.schedule is None or ctx.schedule != ctx.params.get("_schedule"):
        raise PermanentFailure(
            f"ctx.schedule is {ctx.schedule!r}, params say {ctx.params.get('_schedule')!r}"
        )
    ctx.log.info("fired by schedule {} at {}", ctx.schedule["name"], ctx.schedule["fire_at"])
    seconds = float(ctx.params.get("seconds", 0))
    if seconds:
        gevent.sleep(seconds)
    _finished(ctx, execution)


@task_handler("follow_up")
def follow_up(ctx):
    """Enqueues params.count tasks of params.type into params.queue with ctx.enqueue."""
    options = {key: ctx.params[key] for key in ("priority", "dedupe_key", "delay") if key in ctx.params}
    for _ in range(int(ctx.params.get("count", 1))):
        task_id = ctx.enqueue(
            ctx.params["queue"], ctx.params.get("type", "record"), {"from": ctx.task_id}, **options
        )
        ctx.log.info("enqueued follow-up {} (duplicate: {})", task_id, task_id.duplicate)


@task_handler("spin_until_cancelled")
def spin_until_cancelled(ctx):
    """CPU work on a native thread that checks ctx.cancel_requested() between
    slices of work, and appends "stopped <task_id>" to params.file when it
    sees the cancel (the thread cannot be interrupted from outside)."""

    def spin() -> None:
        deadline = time.monotonic() + float(ctx.params.get("seconds", 60))
        while time.monotonic() < deadline:
            sum(range(10_000))
            if ctx.cancel_requested():
                with open(ctx.params["file"], "a") as out:
                    out.write(f"stopped {ctx.task_id}\n")
                return

    _started(ctx)
    ctx.run_in_thread(spin)


@task_handler("gated")
def gated(ctx):
    """Runs until the file params.gate exists (at most params.seconds, default
    120), recording start and finish: the test decides when it ends."""
    execution = _started(ctx)
    deadline = time.monotonic() + float(ctx.params.get("seconds", 120))
    while not os.path.exists(ctx.params["gate"]) and time.monotonic() < deadline:
        gevent.sleep(0.05)
    _finished(ctx, execution)

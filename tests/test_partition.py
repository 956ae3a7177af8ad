"""Leases under a network partition: a server cut off from the database stops
its handlers before anyone may rescue their tasks, and its late writes never
land over the newer attempt."""

import time

from geventq import Status
from tests.invariants import check
from tests.support import wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
HEARTBEAT = {"heartbeat_interval": 0.5, "heartbeat_timeout": 4}  # lease: 2 s


def runs_of(db, task_id: int) -> list[dict]:
    return db.query(
        "SELECT * FROM executions WHERE task_id = %s AND table_name = 'q_tasks' ORDER BY started_at",
        (task_id,),
    )


def test_partitioned_server_gives_its_task_up_before_another_rescues_it(chaos_db, proxy, executors):
    # (proxy before executors: torn down after them, so A can still go offline cleanly)
    db = chaos_db
    db.add_queue("q", "q_tasks")
    db.add_queue("qa", "qa_tasks", server_id="A")
    # Given server A, reaching the database through its own proxy, running a long task
    a = executors.start(
        "A", executor=HEARTBEAT, database={"host": "127.0.0.1", "port": proxy.port, "read_timeout": 3}
    )
    [task_id] = db.insert_tasks("q_tasks", "chaos", params={"kind": "slow", "seconds": 60}, max_retries=3)
    wait_for(lambda: runs_of(db, task_id), message="A running the task")
    b = executors.start("B", executor=HEARTBEAT)
    # (B's own run of it, later, is short)
    db.execute('UPDATE q_tasks SET task_params = \'{"kind": "slow", "seconds": 0.5}\'')
    # When A's database traffic is black-holed
    proxy.set_mode("blackhole")
    cut_at = db.scalar("SELECT NOW(6)")
    # Then A stops the handler within its lease (half the heartbeat timeout)
    wait_for(lambda: runs_of(db, task_id)[0]["finished_at"], timeout=5, message="A's handler stopped")
    [a_run] = runs_of(db, task_id)
    assert a_run["ended"] == "lease" and a_run["server_id"] == "A"
    assert (a_run["finished_at"] - cut_at).total_seconds() < 2 + 1.0
    # and B rescues the task after the heartbeat timeout, and finishes it
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=15, message="B finished it")
    a_run, b_run = runs_of(db, task_id)
    assert b_run["server_id"] == "B" and b_run["retry_count"] == 1 and b_run["ended"] == "ok"
    assert (b_run["started_at"] - cut_at).total_seconds() >= 4 - 0.5
    # A's run ended before B's began
    assert a_run["finished_at"] < b_run["started_at"]
    finished = db.task("q_tasks", task_id)
    # When the partition heals
    proxy.set_mode("pass")
    wait_for(lambda: "heartbeat lease renewed" in a.output, timeout=15, message="A renewed its lease")
    # Then A goes on claiming new work
    ids = db.insert_tasks("qa_tasks", "chaos", 5, params={"kind": "fast"})
    wait_for(lambda: db.status_counts("qa_tasks") == {DONE: 5}, timeout=15, message="A ran new tasks")
    assert {
        run["server_id"] for run in db.query("SELECT server_id FROM executions WHERE table_name = 'qa_tasks'")
    } == {"A"}
    assert len(ids) == 5
    # and wrote nothing over B's outcome
    time.sleep(1)
    assert db.task("q_tasks", task_id) == finished
    assert (finished["server_id"], finished["retry_count"]) == ("B", 1)
    # and said that it gave the task up, in its log and in the task's job log
    assert "heartbeat lease lapsed" in a.output and "stopped 1 running handlers" in a.output
    job_logs = list((a.config_path.parent / "logs").glob(f"job-q_tasks-{task_id}-*.log"))
    assert any("lease lapsed" in path.read_text() for path in job_logs)
    assert "rescued 1 tasks in q_tasks" in b.output
    report = check(db.connect(), ["q_tasks", "qa_tasks"])
    assert report.ok, report.text()


def test_a_lapse_hidden_by_a_blocked_hub_still_stops_the_handlers(chaos_db, proxy, executors, tmp_path):
    """The lease watch runs on the hub: when a handler blocks the hub through
    the whole lapse (cut off, then healed before the hub runs again), only the
    heartbeat thread saw the lease run out. Another server may have rescued
    the tasks meanwhile, so the handlers must stop as soon as the hub runs."""
    db = chaos_db
    db.add_queue("q", "q_tasks")
    db.add_queue("qa", "qa_tasks", server_id="A")
    heartbeat = {"heartbeat_interval": 0.5, "heartbeat_timeout": 2}  # lease: 1 s
    # Given A running a long task of an open queue
    a = executors.start(
        "A", executor=heartbeat, database={"host": "127.0.0.1", "port": proxy.port, "read_timeout": 3}
    )
    [task_id] = db.insert_tasks("q_tasks", "chaos", params={"kind": "slow", "seconds": 60})
    wait_for(lambda: runs_of(db, task_id), message="A running the task")
    executors.start("B", executor=heartbeat)
    db.execute('UPDATE q_tasks SET task_params = \'{"kind": "slow", "seconds": 0.5}\'')
    # When a handler of A blocks its hub (until the test opens the gate), and A
    # is cut off meanwhile (max_retries 0: rescued as A looks dead, it fails
    # rather than block A's hub a second time)
    gate = tmp_path / "gate"
    db.insert_tasks(
        "qa_tasks", "chaos", params={"kind": "cpu", "seconds": 120, "gate": str(gate)}, max_retries=0
    )
    wait_for(
        lambda: db.scalar("SELECT COUNT(*) FROM executions WHERE table_name = 'qa_tasks'"),
        message="the hub blocked",
    )
    proxy.set_mode("blackhole")
    # and B rescues and finishes the task, then the partition heals before A's hub runs again
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=60, message="B finished it")
    proxy.set_mode("pass")
    # ... and A's heartbeat thread (which the blocked hub does not stop) renews
    # its lease: only then does the hub run again
    healed_at = db.scalar("SELECT NOW(3)")
    wait_for(
        lambda: db.scalar("SELECT last_heartbeat FROM servers WHERE server_id = 'A'") > healed_at,
        timeout=30,
        message="A heartbeating again",
    )
    gate.touch()
    # Then, as soon as its hub runs again, A stops its run of the task
    wait_for(lambda: runs_of(db, task_id)[0]["finished_at"], timeout=15, message="A's run stopped")
    a_run = runs_of(db, task_id)[0]
    [cpu_run] = db.query("SELECT * FROM executions WHERE table_name = 'qa_tasks'")
    assert (a_run["server_id"], a_run["ended"]) == ("A", "lease")
    assert abs((a_run["finished_at"] - cpu_run["finished_at"]).total_seconds()) < 1.0
    assert "heartbeat lease lapsed while the event loop was blocked" in a.output
    assert (db.task("q_tasks", task_id)["server_id"], db.task("q_tasks", task_id)["status"]) == ("B", DONE)


def _lapsed_lease(ttl: float = 1.0):
    """A real Lease whose last renewal is older than its ttl."""
    from geventq.lease import Lease

    lease = Lease(ttl)
    lease.renew(time.monotonic() - 2 * ttl)
    return lease


def test_a_wake_while_the_lease_is_lapsed_does_not_block_the_hub():
    """Seen in a 10-minute soak: a retry's wake (spawn_later(..., runner.wake))
    fired while the lease was lapsed, so `_wake.wait(0.1)` returned at once
    and the scanner looped without yielding until the next heartbeat. With
    the hub blocked the lease watch could not stop the running handlers, and
    another server rescued and ran a task the blocked server still ran."""

    import gevent

    from geventq.queues import QueueRunner

    # Given a queue runner whose server's lease is lapsed (renewed after 1 s,
    # and still invalid then: no lease watch runs here to settle the lapse), and a wake pending
    lease = _lapsed_lease()
    gevent.spawn_later(1.0, lease.renew, time.monotonic())
    row = {"queue_name": "q", "table_name": "q_tasks", "scan_interval": 1, "max_workers": 2}
    runner = QueueRunner(
        row,
        claimer=_Claimer(lambda table, limit: []),
        lease=lease,
        claimed=None,
        listeners=None,
        attempts=None,
    )
    runner.wake()
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    # When the scanner runs through the lapse
    runner.start()
    gevent.sleep(1.5)
    runner.stop_claiming()
    ticker.kill()
    # Then the hub went on running other greenlets all along (about 100 ticks a second)
    assert len(ticks) > 75, f"the hub was blocked: {len(ticks)} ticks in 1.5 s"


class _Runner:
    def __init__(self):
        self.running, self.stopped = 0, 0

    def stop_handlers(self, exception) -> int:
        stopped, self.running = self.running, 0
        self.stopped += stopped
        return stopped


def test_handlers_started_after_the_lapse_was_seen_are_stopped_too():
    """A claim sent just before the lease lapsed may return after it (a retried
    claim, a slow reply): its handlers start while the lease is invalid, after
    the watch has already stopped everything once. Seen in a 10-minute soak:
    s3 started attempt 0 of a task so, s2 rescued it, and s3 ran attempt 1 of
    it beside attempt 0."""

    import gevent

    from geventq.lease import LeaseWatch

    lease, runner = _lapsed_lease(), _Runner()
    watch = LeaseWatch(lease, runner.stop_handlers, lambda: runner.running)
    watch.start()
    # Given the watch has seen the lapse
    gevent.sleep(0.3)
    # When handlers start anyway
    runner.running = 2
    gevent.sleep(0.6)
    watch.stop()
    # Then they are stopped within a tick
    assert runner.stopped == 2 and runner.running == 0


class _Claimer:
    """A claimer whose claim is the test's function and whose database is away."""

    task_types = ("chaos",)

    def __init__(self, claim):
        self._claim = claim

    def claim(self, table, limit, queue_name, limits, *, order=None, has_key_column=False):
        from geventq.claims import ClaimResult

        return ClaimResult(self._claim(table, limit))

    def table_features(self, table_name):
        from geventq.store import TaskTableFeatures

        return TaskTableFeatures()

    def seconds_until_next_due(self, table, queue_name):
        from geventq.errors import DatabaseUnavailable

        raise DatabaseUnavailable("no database in this test")


def _runner_with_claim(lease, claim):
    from geventq.attempts import ClaimedAttempts, Listeners
    from geventq.queues import QueueRunner

    claimed = ClaimedAttempts()
    runner = QueueRunner(
        {"queue_name": "q", "table_name": "q_tasks", "scan_interval": 1, "max_workers": 2},
        claimer=_Claimer(claim),
        lease=lease,
        claimed=claimed,
        listeners=Listeners(),
        attempts=None,
    )
    return claimed, runner


CLAIMED_ROW = {
    "id": 1,
    "task_type": "chaos",
    "task_params": "{}",
    "retry_count": 0,
    "max_retries": 3,
    "schedule_time": None,
}


def test_a_claim_that_returns_after_the_lease_lapsed_starts_nothing():
    from geventq.lease import Lease

    lease = Lease(1.0)
    lease.renew(time.monotonic())  # valid when the claim starts

    def claim(table, limit):
        lease.renew(time.monotonic() - 2)  # ... and lapsed by the time it returns
        return [dict(CLAIMED_ROW)]

    claimed, runner = _runner_with_claim(lease, claim)
    runner._claim_batch(2)
    assert len(runner.pool) == 0 and not len(claimed)


def test_a_claim_that_outlived_a_whole_lapse_starts_nothing():
    """Valid when sent, lapsed, renewed and settled again by the time the reply
    comes: another server may have rescued and reclaimed these rows meanwhile."""
    from geventq.lease import Lease

    lease = Lease(1.0)
    lease.renew(time.monotonic())

    def claim(table, limit):
        lease.renewed_at = time.monotonic() - 2  # the lease runs out during the claim,
        lease.renew(time.monotonic())  # a heartbeat renews it,
        lease.end_lapse()  # and the watch settles the lapse
        assert lease.valid()
        return [dict(CLAIMED_ROW)]

    claimed, runner = _runner_with_claim(lease, claim)
    runner._claim_batch(2)
    assert len(runner.pool) == 0 and not len(claimed)


def test_a_renewal_after_a_lapse_allows_no_claim_until_the_handlers_are_stopped():
    """The hub may sleep through a whole lapse (a handler that never yields):
    when it wakes the lease is fresh again, but the old handlers still run and
    their tasks may already be rescued. The lease stays invalid until the
    watch has stopped them."""

    from geventq.lease import LeaseWatch

    lease, runner = _lapsed_lease(), _Runner()
    runner.running = 3
    lease.renew(time.monotonic())  # the heartbeat thread got through; the watch has not run
    assert not lease.valid()
    LeaseWatch(lease, runner.stop_handlers, lambda: runner.running).watch_once()
    assert runner.stopped == 3 and lease.valid()

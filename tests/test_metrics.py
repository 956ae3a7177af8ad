"""GET /metrics of a real executor, parsed with prometheus-client's parser:
the counters move as tasks run, fail and retry; histograms count every
attempt; the gauges read from the database match the table; a database that
does not answer costs the scrape its database gauges, not the rest."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from geventq import Status
from tests.faultproxy import FaultProxy
from tests.support import http, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status


def scrape(base_url: str, headers: dict | None = None) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one scrape."""
    request = urllib.request.Request(f"{base_url}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_counters_histograms_and_gauges_follow_the_tasks(db, executors):
    # Given a queue, a queue with a 1 s task timeout, and an executor
    db.add_queue("mq", "metrics_tasks", max_workers=7)
    db.add_queue("slowq", "slow_tasks", max_workers=2, task_timeout=1)
    process = executors.start()
    base, labels = process.admin_url, {"queue": "mq", "server": "server-001"}

    # When tasks succeed, succeed on their 2nd attempt, fail twice for good,
    # time out, and wait for a handler no server has
    db.insert_tasks("metrics_tasks", "record", 5)
    db.insert_tasks("metrics_tasks", "flaky", 2, params={"succeed_on": 2}, max_retries=3)
    db.insert_tasks("metrics_tasks", "fail", 3, max_retries=1)
    db.insert_tasks("slow_tasks", "hang", 1, max_retries=0)
    db.insert_tasks("metrics_tasks", "nobody_handles_this", 4)
    db.insert_tasks("metrics_tasks", "nobody_handles_this", 1, delay_seconds=3600)
    finished = f"SELECT COUNT(*) FROM metrics_tasks WHERE status IN ({DONE:d}, {FAILED:d})"
    wait_for(
        lambda: (
            db.scalar(finished) == 10
            and db.scalar(f"SELECT COUNT(*) FROM slow_tasks WHERE status = {FAILED:d}") == 1
        ),
        timeout=30,
        message="every runnable task finished",
    )

    # Then each counter says what happened, per queue and server
    samples = wait_for(
        lambda: (s := scrape(base)) and value(s, "geventq_tasks_succeeded_total", **labels) == 7 and s,
        message="succeeded_total 7",
    )
    assert value(samples, "geventq_tasks_claimed_total", **labels) == 5 + 2 * 2 + 3 * 2
    assert value(samples, "geventq_tasks_retried_total", **labels) == 2 + 3
    assert value(samples, "geventq_tasks_failed_total", **labels) == 3
    assert value(samples, "geventq_tasks_timed_out_total", **labels) == 0
    assert value(samples, "geventq_tasks_rescued_total", **labels) == 0
    slow = {"queue": "slowq", "server": "server-001"}
    assert value(samples, "geventq_tasks_timed_out_total", **slow) == 1
    assert value(samples, "geventq_tasks_failed_total", **slow) == 1
    assert value(samples, "geventq_tasks_succeeded_total", **slow) == 0

    # and the histograms count every attempt, in their +Inf bucket too
    for name in ("geventq_task_run_seconds", "geventq_task_pickup_latency_seconds"):
        assert value(samples, f"{name}_count", **labels) == 15
        assert value(samples, f"{name}_bucket", le="+Inf", **labels) == 15
        assert value(samples, f"{name}_sum", **labels) > 0
    assert value(samples, "geventq_task_run_seconds_bucket", le="1.0", **slow) == 0
    assert value(samples, "geventq_task_run_seconds_count", **slow) == 1

    # and the gauges: pool sizes, nothing running, the lease, the database read
    assert value(samples, "geventq_pool_size", **labels) == 7
    assert value(samples, "geventq_pool_size", **slow) == 2
    assert value(samples, "geventq_tasks_running", **labels) == 0
    assert value(samples, "geventq_lease_valid", server="server-001") == 1
    assert value(samples, "geventq_outcomes_buffered", server="server-001") == 0
    assert value(samples, "geventq_metrics_database_ok", server="server-001") == 1

    # and the due pending gauges match the table (the future task is not due)
    due = db.scalar(
        f"SELECT COUNT(*) FROM metrics_tasks WHERE status = {PENDING:d} AND schedule_time <= NOW(3)"
    )
    assert due == 4
    assert value(samples, "geventq_tasks_pending_due", queue="mq") == due
    assert value(samples, "geventq_tasks_pending_due", queue="slowq") == 0
    assert value(samples, "geventq_oldest_pending_due_age_seconds", queue="mq") > 0
    assert value(samples, "geventq_oldest_pending_due_age_seconds", queue="slowq") == 0
    # and prometheus-client's process collector is on the same registry
    assert value(samples, "process_cpu_seconds_total") is not None


def test_running_gauge_and_metrics_auth(db, executors):
    # Given an executor whose /metrics needs the admin token
    db.add_queue("mq", "metrics_tasks", max_workers=3)
    process = executors.start(
        admin={"token": "s3cret", "metrics_auth": True}, executor={"shutdown_timeout": 0.5}
    )
    bearer = {"Authorization": "Bearer s3cret"}

    # Then /metrics without the token is a 401 envelope, like /admin/
    status, body = http("GET", f"{process.admin_url}/metrics")
    assert status == 401 and body["code"] == 401
    assert http("GET", f"{process.admin_url}/metrics", headers={"Authorization": "Bearer nope"})[0] == 401
    # and the OpenAPI document says so
    document = http("GET", f"{process.admin_url}/admin/openapi.json", headers=bearer)[1]
    assert document["paths"]["/metrics"]["get"]["security"] == [{"bearerAuth": []}, {}]

    # When two tasks hang
    db.insert_tasks("metrics_tasks", "hang", 2, params={"seconds": 60})
    wait_for(lambda: db.scalar(f"SELECT COUNT(*) FROM metrics_tasks WHERE status = {RUNNING:d}") == 2)

    # Then, with the token, the running gauge shows them
    samples = wait_for(
        lambda: (
            (s := scrape(process.admin_url, bearer))
            and value(s, "geventq_tasks_running", queue="mq", server="server-001") == 2
            and s
        ),
        message="running 2",
    )
    assert value(samples, "geventq_tasks_claimed_total", queue="mq", server="server-001") == 2
    assert value(samples, "geventq_tasks_pending_due", queue="mq") == 0


def test_database_outage_costs_only_the_database_gauges(db, executors):
    # Given an executor that reaches the database through a proxy, and a task it ran
    db.add_queue("mq", "metrics_tasks")
    with FaultProxy() as proxy:
        process = executors.start(database={"port": proxy.port})
        base = process.admin_url
        db.insert_tasks("metrics_tasks", "record", 1)
        wait_for(lambda: db.scalar("SELECT status FROM metrics_tasks") == DONE)
        assert value(scrape(base), "geventq_metrics_database_ok", server="server-001") == 1

        # When the database stops answering (a partition: silence, no error)
        proxy.set_mode("blackhole")
        time.sleep(1.1)  # past the reuse window of the last database read
        started = time.monotonic()
        samples = scrape(base)
        elapsed = time.monotonic() - started

        # Then the scrape answers within its database budget, without the database gauges
        assert elapsed < 5, f"scrape took {elapsed:.1f}s"
        assert value(samples, "geventq_metrics_database_ok", server="server-001") == 0
        assert value(samples, "geventq_tasks_pending_due", queue="mq") is None
        assert value(samples, "geventq_tasks_succeeded_total", queue="mq", server="server-001") == 1
        proxy.set_mode("drop")  # closes the silent connections, then passes again
        process.stop()


def test_rescue_is_counted_by_the_rescuer_under_the_queue_name(db, executors):
    # Given a queue pinned to server A, which runs a long task, and server B
    db.add_queue("pinned", "pinned_tasks", server_id="server-A")
    server_a = executors.start("server-A")
    server_b = executors.start("server-B")
    db.insert_tasks("pinned_tasks", "hang", 1, params={"seconds": 60})
    wait_for(lambda: db.scalar("SELECT status FROM pinned_tasks") == RUNNING, message="A runs the task")

    # When A dies and B rescues its task (B does not run that queue itself)
    server_a.kill()
    wait_for(
        lambda: db.scalar("SELECT status FROM pinned_tasks") == PENDING, timeout=20, message="the rescue"
    )

    # Then B counts it under the queue's name
    samples = scrape(server_b.admin_url)
    assert value(samples, "geventq_tasks_rescued_total", queue="pinned", server="server-B") == 1
    assert value(samples, "geventq_tasks_pending_due", queue="pinned") == 1

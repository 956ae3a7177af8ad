"""Limits across the cluster with real servers: global_max_workers,
rate_limit, key_max_workers, and a handler's RateLimited pause. Every
property is read from what was recorded: the handlers' runs (executions)
and the claims' start times (the task rows' start_time, ctx.started_at)."""

import collections
import signal
from datetime import timedelta

from geventq import Status
from tests.invariants import max_overlap, most_in_any_window
from tests.support import running_queue_on, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
SERVERS = ("s1", "s2", "s3")


def runs(db, table: str = "q_tasks") -> list[dict]:
    return db.query(
        "SELECT task_id, retry_count, server_id, started_at, finished_at, claimed_at FROM executions "
        "WHERE table_name = %s ORDER BY started_at",
        (table,),
    )


def start_servers(db, executors, queue: str, servers=SERVERS, **sections) -> dict:
    started = {server: executors.start(server, **sections) for server in servers}
    wait_for(lambda: running_queue_on(db, servers, queue), message=f"{queue} running on {servers}")
    return started


def test_the_global_cap_holds_across_three_servers_and_is_what_limits(db, executors):
    # Given three servers with 2 slots each on a queue capped at 4 across the
    # cluster (so reaching the cap takes two servers at least)
    db.add_queue("q", "q_tasks", max_workers=2, global_max_workers=4)
    start_servers(db, executors, "q")
    # When 40 tasks of 0.3 s arrive (6 slots would run them half as wide again)
    db.insert_tasks("q_tasks", "record", 40, params={"seconds": 0.3})
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 40}, timeout=60, message="all done")
    # Then at no moment did more than 4 run, and 4 did: the cap, not the load, limited
    recorded = runs(db)
    assert len(recorded) == 40
    assert max_overlap([(run["started_at"], run["finished_at"]) for run in recorded]) == 4
    # and the slots themselves (running rows, claim to outcome) never exceeded it either
    rows = db.query("SELECT start_time, end_time FROM q_tasks")
    assert max_overlap([(row["start_time"], row["end_time"]) for row in rows]) <= 4
    assert len({run["server_id"] for run in recorded}) > 1


def test_a_dead_servers_running_tasks_hold_their_slots_until_rescued(db, executors):
    # Given one server running two long tasks of a queue capped at 2
    db.add_queue("q", "q_tasks", max_workers=5, global_max_workers=2)
    first = start_servers(db, executors, "q", servers=("s1",))["s1"]
    # (no retries: the rescue fails them, so they do not take the slots again)
    long_ids = db.insert_tasks("q_tasks", "hang", 2, params={"seconds": 300}, max_retries=0)
    wait_for(lambda: len(runs(db)) == 2, message="both long tasks running on s1")
    start_servers(db, executors, "q", servers=("s2",))
    # When s1 is killed and more tasks arrive
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    db.insert_tasks("q_tasks", "record", 6, params={"seconds": 0.1})
    # Then nothing new starts until the rescue frees the slots, and then all run
    wait_for(
        lambda: db.status_counts("q_tasks").get(DONE) == 6,
        timeout=40,
        message="the new tasks done after the rescue",
    )
    rescued_at = min(
        row["updated_at"]
        for row in db.query(
            f"SELECT updated_at FROM q_tasks WHERE id IN {tuple(long_ids)} AND retry_count = 1"
        )
    )
    new_starts = [run["claimed_at"] for run in runs(db) if run["server_id"] == "s2"]
    assert new_starts and min(new_starts) >= rescued_at, (min(new_starts), rescued_at)


def test_the_rate_limit_holds_in_every_window_across_three_servers(db, executors):
    # Given a queue allowing 8 starts in any 2 seconds, on three servers, and
    # a mixed load: quick tasks, slower ones, and flaky ones whose retries count too
    db.add_queue("q", "q_tasks", max_workers=10, rate_limit=8, rate_period=2)
    start_servers(db, executors, "q")
    db.insert_tasks("q_tasks", "record", 24)
    db.insert_tasks("q_tasks", "record", 8, params={"seconds": 0.5})
    db.insert_tasks("q_tasks", "flaky", 8, params={"succeed_on": 2})
    # When they run (48 starts at 8 per 2 s: about 12 s)
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 40}, timeout=60, message="all done")
    # Then no window of 2 s held more than 8 starts, counting every attempt by its claim
    starts = [run["claimed_at"] for run in runs(db)]
    assert len(starts) == 48
    assert most_in_any_window(starts, 2.0) <= 8
    # and the limit was what paced them: it was reached, and the work took at least 5 windows
    assert most_in_any_window(starts, 2.0) >= 7
    assert max(starts) - min(starts) >= timedelta(seconds=10)


def test_a_full_key_does_not_hold_back_the_keys_behind_it(db, executors):
    # Given three servers on a queue with at most one running task per key
    db.add_queue("q", "q_tasks", max_workers=5, key_max_workers=1)
    start_servers(db, executors, "q")
    # When ten tasks of key "a" are due first, and one each of keys b..f after them
    db.execute(
        "INSERT INTO q_tasks (task_type, task_params, concurrency_key, schedule_time) "
        "SELECT 'record', '{\"seconds\": 0.4}', 'a', NOW(3) - INTERVAL 10 SECOND FROM seq_1_to_10"
    )
    db.execute(
        "INSERT INTO q_tasks (task_type, task_params, concurrency_key) VALUES "
        + ", ".join(f"('record', '{{\"seconds\": 0.4}}', '{key}')" for key in "bcdef")
    )
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 15}, timeout=60, message="all done")
    # Then no key ever ran twice at once
    keys = {row["id"]: row["concurrency_key"] for row in db.query("SELECT id, concurrency_key FROM q_tasks")}
    by_key = collections.defaultdict(list)
    for run in runs(db):
        by_key[keys[run["task_id"]]].append((run["started_at"], run["finished_at"]))
    assert {key: max_overlap(spans) for key, spans in by_key.items()} == dict.fromkeys("abcdef", 1)
    # and keys b..f did not queue behind a's line: each started before a's third run
    a_starts = sorted(start for start, _ in by_key["a"])
    assert max(start for key in "bcdef" for start, _ in by_key[key]) < a_starts[2]


def test_rate_limited_returns_the_task_unspent_and_pauses_the_queue_everywhere(db, executors):
    # Given two servers on a queue, and one task whose first run hits a remote rate limit
    db.add_queue("q", "q_tasks", max_workers=5)
    start_servers(db, executors, "q", servers=("s1", "s2"))
    [limited] = db.insert_tasks("q_tasks", "rate_limited", 1, params={"seconds": 3})
    wait_for(lambda: len(runs(db)) == 1, message="the first run")
    wait_for(lambda: db.task("q_tasks", limited)["status"] == PENDING, message="back to pending")
    row = db.task("q_tasks", limited)
    paused_until = db.scalar("SELECT paused_until FROM queue_state WHERE queue_name = 'q'")
    # When more tasks arrive during the pause
    others = db.insert_tasks("q_tasks", "record", 5)
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 6}, timeout=30, message="all done")
    # Then the attempt was not spent, and it ran again only once the pause was over
    assert row["retry_count"] == 0 and "RateLimited" in row["error_msg"]
    assert db.task("q_tasks", limited)["retry_count"] == 0
    recorded = runs(db)
    assert [run["task_id"] for run in recorded].count(limited) == 2
    # and neither server started anything of the queue before the pause ended
    later = [run for run in recorded if run is not recorded[0]]
    assert {run["task_id"] for run in later} == {limited, *others}
    assert min(run["claimed_at"] for run in later) >= paused_until
    assert {run["server_id"] for run in later} <= {"s1", "s2"}


def test_lowering_a_limit_stops_nothing_running_and_holds_from_the_next_claim(db, executors, tmp_path):
    # Given three running tasks of a queue capped at 3, and two more held back
    db.add_queue("q", "q_tasks", max_workers=10, global_max_workers=3)
    server = start_servers(db, executors, "q", servers=("s1",))["s1"]
    gate = tmp_path / "gate"
    ids = db.insert_tasks("q_tasks", "gated", 5, params={"gate": str(gate)})
    wait_for(lambda: db.status_counts("q_tasks") == {RUNNING: 3, PENDING: 2}, message="three run")
    first_three = {run["task_id"] for run in runs(db)}
    # When the cap is lowered to 1 and the server has applied it
    db.execute("UPDATE queue_configs SET global_max_workers = 1 WHERE queue_name = 'q'")
    wait_for(
        lambda: "limits global_max_workers=3 -> global_max_workers=1" in server.output,
        message="the new limit applied",
    )
    # Then the three running ones go on (nothing is stopped) and end by themselves
    assert db.status_counts("q_tasks") == {RUNNING: 3, PENDING: 2}
    gate.touch()
    wait_for(lambda: db.status_counts("q_tasks") == {DONE: 5}, timeout=30, message="all done")
    recorded = runs(db)
    assert len(recorded) == 5 and all(run["finished_at"] is not None for run in recorded)
    assert {row["retry_count"] for row in db.query("SELECT retry_count FROM q_tasks")} == {0}
    # and the two held back ran one at a time, after the running count fell under the new cap
    later = [run for run in recorded if run["task_id"] not in first_three]
    assert sorted(run["task_id"] for run in later) == sorted(set(ids) - first_three)
    assert max_overlap([(run["claimed_at"], run["finished_at"]) for run in later]) == 1
    last_of_three = max(run["finished_at"] for run in recorded if run["task_id"] in first_three)
    assert min(run["claimed_at"] for run in later) >= last_of_three - timedelta(milliseconds=1)

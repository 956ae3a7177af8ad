"""`geventq run --processes N` with real processes: the supervisor replaces a
killed child and requeues its task at once, replaces a stopped child once
its heartbeat is stale, drains every child on SIGTERM, stops on a crash
loop, refuses a second supervisor on one pid file, and its children drain
themselves when it dies."""

from __future__ import annotations

import os
import signal

from geventq import Status
from tests.support import ExecutorProcess, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
CHILDREN = ("sup-1", "sup-2")


def start_supervisor(executors, *, extra_args=(), **sections) -> ExecutorProcess:
    """A supervisor of two executors, sup-1 and sup-2, both online."""
    supervisor = executors.start("sup", wait=False, extra_args=["--processes", "2", *extra_args], **sections)
    wait_for(lambda: online_children(supervisor), timeout=30, message="both children online")
    return supervisor


def online_children(supervisor: ExecutorProcess) -> dict[str, int]:
    """server_id -> pid of the supervisor's children registered online, or {}
    while either is missing."""
    if supervisor.process.poll() is not None:
        raise AssertionError(f"supervisor exited with {supervisor.process.returncode}:\n{supervisor.output}")
    try:
        rows = supervisor.db.query(
            "SELECT server_id, pid FROM servers WHERE server_id IN %s AND state = 'online'", (CHILDREN,)
        )
    except Exception:  # noqa: BLE001 - the first child has not created the database yet
        return {}
    pids = {row["server_id"]: row["pid"] for row in rows}
    children = {server: pid for server, pid in pids.items() if parent_of(pid) == supervisor.process.pid}
    return children if len(children) == len(CHILDREN) else {}


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid: int) -> bool:
    return parent_of(pid) is None


def runs_of(db, task_id: int) -> list[dict]:
    return db.query(
        "SELECT retry_count, server_id, pid, started_at, finished_at FROM executions "
        "WHERE task_id = %s ORDER BY id",
        (task_id,),
    )


def test_a_killed_child_is_replaced_and_its_task_runs_again_at_once(db, executors):
    # Given two children and a heartbeat_timeout far longer than the test
    # waits: only the supervisor's own rescue can requeue the task in time
    db.add_queue("q", "q_tasks")
    supervisor = start_supervisor(executors, executor={"heartbeat_timeout": 60})
    [task_id] = db.insert_tasks("q_tasks", "record", params={"seconds": 4})
    first = wait_for(lambda: runs_of(db, task_id), message="the first run")[0]
    # When the child running it is killed mid-task
    killed_at = db.scalar("SELECT NOW(6)")
    os.kill(first["pid"], signal.SIGKILL)
    # Then the task runs again within seconds, counted as an attempt
    wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=30, message="done")
    runs = runs_of(db, task_id)
    assert [run["retry_count"] for run in runs] == [0, 1]
    assert db.task("q_tasks", task_id)["retry_count"] == 1
    assert runs[0]["finished_at"] is None
    assert (runs[1]["started_at"] - killed_at).total_seconds() < 15
    # and the killed child was replaced under its server_id
    children = wait_for(lambda: online_children(supervisor), timeout=20, message="a new child")
    assert children[first["server_id"]] != first["pid"]
    assert "exited with code -9" in supervisor.output


def test_a_stopped_child_is_replaced_once_its_heartbeat_is_stale(db, executors):
    # Given a queue only sup-2 runs, and sup-2 in the middle of its task
    db.add_queue("q", "q_tasks", server_id="sup-2")
    supervisor = start_supervisor(executors)
    [task_id] = db.insert_tasks("q_tasks", "record", params={"seconds": 3})
    first = wait_for(lambda: runs_of(db, task_id), message="the first run")[0]
    stopped = first["pid"]
    # When sup-2 stops (alive, but doing nothing: no heartbeat, no work)
    os.kill(stopped, signal.SIGSTOP)
    try:
        # Then once its heartbeat is stale (heartbeat_timeout 3 s) it is
        # killed and replaced, and the new sup-2 runs the task again
        children = wait_for(
            lambda: online_children(supervisor).get("sup-2") not in (None, stopped),
            timeout=30,
            message="sup-2 replaced",
        )
        assert children
        assert gone(stopped)
        wait_for(lambda: db.task("q_tasks", task_id)["status"] == DONE, timeout=30, message="done")
    finally:
        if not gone(stopped):
            os.kill(stopped, signal.SIGKILL)
    runs = runs_of(db, task_id)
    # never two attempts at once: the stopped one never went on
    assert [(run["retry_count"], run["finished_at"] is None) for run in runs] == [(0, True), (1, False)]
    assert "heartbeat stale" in supervisor.output


def test_sigterm_drains_every_child_and_exits_0(db, executors):
    # Given both children running tasks
    db.add_queue("q", "q_tasks", max_workers=5)
    supervisor = start_supervisor(executors)
    db.insert_tasks("q_tasks", "record", 20, params={"seconds": 2})
    wait_for(
        lambda: db.scalar("SELECT COUNT(DISTINCT server_id) FROM executions") == 2,
        message="tasks running on both children",
    )
    children = online_children(supervisor)
    # When the supervisor gets SIGTERM
    supervisor.terminate()
    # Then it exits 0 once both children drained: what ran finished,
    # nothing is left running, and both children are offline and gone
    assert supervisor.wait(60) == 0
    assert RUNNING not in db.status_counts("q_tasks")
    assert db.scalar("SELECT COUNT(*) FROM executions WHERE finished_at IS NULL") == 0
    assert db.scalar("SELECT COUNT(*) FROM executions") >= 10
    states = db.query("SELECT state FROM servers WHERE server_id IN %s", (CHILDREN,))
    assert [row["state"] for row in states] == ["offline", "offline"]
    assert all(gone(pid) for pid in children.values())


def test_a_child_that_crashes_at_start_up_is_a_crash_loop(db, executors, tmp_path):
    # Given handlers whose module cannot be imported: every child exits at start-up
    broken = tmp_path / "broken_handlers"
    broken.mkdir()
    (broken / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    supervisor = executors.start(
        "sup", wait=False, extra_args=["--processes", "2"], handlers={"paths": [str(broken)]}
    )
    # Then the supervisor gives up with a non-zero exit and says why
    assert supervisor.wait(60) == 1
    assert "more than 5 restarts in 60s" in supervisor.output
    assert supervisor.output.count("restarting sup-") == 5


def test_a_pidfile_refuses_a_second_supervisor(db, executors, tmp_path):
    pid_path = tmp_path / "geventq.pid"
    config = executors.config(executor={"pidfile": str(pid_path)})
    first = start_supervisor(executors, config_path=config)
    assert int(pid_path.read_text()) == first.process.pid
    # When a second supervisor starts on the same pid file
    second = executors.start("other", wait=False, config_path=config, extra_args=["--processes", "2"])
    # Then it refuses, naming the file and the running pid, and starts nothing
    assert second.wait(30) == 2
    assert str(first.process.pid) in second.output and "executor.pidfile" in second.output
    assert db.scalar("SELECT COUNT(*) FROM servers WHERE server_id LIKE 'other%%'") == 0
    # and the file goes with the first supervisor
    first.terminate()
    assert first.wait(60) == 0
    assert not pid_path.exists()


def test_children_drain_when_the_supervisor_dies(db, executors):
    supervisor = start_supervisor(executors)
    children = online_children(supervisor)
    supervisor.process.kill()
    wait_for(lambda: all(gone(pid) for pid in children.values()), timeout=20, message="children gone")
    states = db.query("SELECT state FROM servers WHERE server_id IN %s", (CHILDREN,))
    assert [row["state"] for row in states] == ["offline", "offline"]


def test_processes_must_be_a_positive_number(db, executors):
    process = executors.start("sup", wait=False, extra_args=["--processes", "0"])
    assert process.wait(30) == 2
    assert "executor.processes" in process.output
    assert "supervisor" not in process.output

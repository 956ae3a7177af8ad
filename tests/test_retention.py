"""Per-queue retention: finished tasks older than retention_days are deleted
in small batches; pending, running and recent tasks stay."""

from tests.support import wait_for


def test_retention_deletes_only_old_finished_tasks(db, executors):
    # Given a queue keeping finished tasks for 2 days
    queue_id = db.add_queue("q", "q_tasks")
    db.execute("UPDATE queue_configs SET retention_days = 2 WHERE id = %s", (queue_id,))
    old = "NOW(3) - INTERVAL 3 DAY"
    db.execute(
        f"INSERT INTO q_tasks (task_type, status, schedule_time, end_time) "
        f"SELECT 'noop', 2 + seq % 3, {old}, {old} FROM seq_1_to_2500"
    )
    db.execute(
        f"INSERT INTO q_tasks (task_type, status, schedule_time) VALUES ('noop', 0, {old} + INTERVAL 5 YEAR)"
    )
    db.execute(
        "INSERT INTO q_tasks (task_type, status, schedule_time, end_time) "
        "VALUES ('noop', 2, NOW(3) - INTERVAL 1 DAY, NOW(3) - INTERVAL 1 DAY)"
    )
    # When an executor runs its maintenance
    process = executors.start()
    # Then the 2,500 old finished tasks are gone (in batches), the rest stays
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM q_tasks") == 2, timeout=20)
    assert "retention: deleted 2500 finished tasks" in wait_for(lambda: process.output)
    assert sorted(db.status_counts("q_tasks").items()) == [(0, 1), (2, 1)]


def test_no_retention_keeps_everything(db, executors):
    db.add_queue("q", "q_tasks")
    db.execute(
        "INSERT INTO q_tasks (task_type, status, schedule_time, end_time) "
        "VALUES ('noop', 2, NOW(3) - INTERVAL 900 DAY, NOW(3) - INTERVAL 900 DAY)"
    )
    process = executors.start()
    wait_for(lambda: "started" in process.output)
    db.insert_tasks("q_tasks", "record")
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM executions") == 1)
    assert db.scalar("SELECT COUNT(*) FROM q_tasks") == 2


def test_schedule_history_keeps_recent_fires_and_each_schedules_latest(db, executors):
    # Given a schedule whose latest fire is 40 days old, ledger rows 35 days old,
    # a recent one, and old rows of a schedule that was deleted
    latest = db.scalar("SELECT UTC_TIMESTAMP(3) - INTERVAL 40 DAY")
    db.execute(
        "INSERT INTO schedules (id, name, queue_name, task_type, cron, status, last_fire_at) "
        "VALUES (7, 'old', 'q', 'noop', '@daily', 0, %s)",
        (latest,),
    )
    db.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, task_table, outcome) "
        "SELECT 7, UTC_TIMESTAMP(3) - INTERVAL 35 DAY - INTERVAL seq SECOND, 't', 'missed' FROM seq_1_to_1500"
    )
    db.execute(
        "INSERT INTO schedule_fires (schedule_id, fire_at, task_table, outcome) VALUES "
        "(7, %s, 't', 'enqueued'), "
        "(7, UTC_TIMESTAMP(3) - INTERVAL 1 DAY, 't', 'missed'), "
        "(99, UTC_TIMESTAMP(3) - INTERVAL 35 DAY, 't', 'missed')",
        (latest,),
    )
    # When an executor keeping 30 days of history runs its maintenance
    process = executors.start(queue={"schedule_history_days": 30})
    # Then only the latest fire and the recent one remain
    wait_for(lambda: db.scalar("SELECT COUNT(*) FROM schedule_fires") == 2, timeout=20)
    assert "schedule history: deleted 1501 fires older than 30 days" in wait_for(lambda: process.output)
    assert db.scalar("SELECT COUNT(*) FROM schedule_fires WHERE schedule_id = 7") == 2

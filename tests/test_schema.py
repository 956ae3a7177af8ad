"""init.sql: idempotent, and the task table the admin API creates is the one
init.sql defines."""

import re

from geventq import admin_store
from geventq.schema import INIT_SQL, split_statements


def normalise(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def test_init_sql_applies_twice_without_duplicates(db):
    # Given a database where init.sql (with its sample rows) already ran once
    for statement in split_statements(INIT_SQL.read_text()):
        db.execute(statement)
    counts = {
        table: db.scalar(f"SELECT COUNT(*) FROM {table}")
        for table in ("queue_configs", "email_tasks", "data_sync_tasks", "report_tasks", "schedules")
    }
    # When it runs again
    for statement in split_statements(INIT_SQL.read_text()):
        db.execute(statement)
    # Then nothing is duplicated
    assert counts == {table: db.scalar(f"SELECT COUNT(*) FROM {table}") for table in counts}
    assert counts["queue_configs"] == 3 and counts["email_tasks"] == 2
    # and the sample schedule is there once, paused
    assert db.query("SELECT name, status, cron FROM schedules") == [
        {"name": "hourly_report", "status": 0, "cron": "@hourly"}
    ]


def test_admin_task_table_ddl_matches_init_sql():
    script = INIT_SQL.read_text()
    [email_tasks] = [s for s in split_statements(script) if "CREATE TABLE IF NOT EXISTS email_tasks" in s]
    ours = admin_store.TASK_TABLE_DDL.format(table="email_tasks")
    assert normalise(ours) == normalise(email_tasks)


def test_an_older_installation_gains_new_own_tables_and_columns_but_no_samples(db, tmp_path):
    from geventq import config
    from geventq.schema import ensure_schema
    from tests.support import write_config

    # Given a database made by an older release: no servers table, no newer
    # queue_configs columns, and the user removed a sample table
    db.execute("DROP TABLE servers")
    db.execute("DROP TABLE schedules")
    db.execute("DROP TABLE schedule_fires")
    db.execute("ALTER TABLE queue_configs DROP COLUMN task_timeout, DROP COLUMN retention_days")
    db.execute("DROP TABLE report_tasks")
    # whole-second scan_interval, no outcome counters, and finished tasks already there
    db.execute("DROP TABLE queue_minute_counts")
    db.execute("ALTER TABLE queue_configs MODIFY COLUMN scan_interval INT NOT NULL DEFAULT 5")
    db.execute("UPDATE queue_configs SET scan_interval = 3 WHERE queue_name = 'email_queue'")
    db.execute("INSERT INTO email_tasks (task_type, status) SELECT 'x', seq % 5 FROM seq_1_to_100")
    queues = db.scalar("SELECT COUNT(*) FROM queue_configs")
    # When an executor starts on it
    ran_init = ensure_schema(config.load(write_config(tmp_path, db), environ={}))
    # Then geventq's own tables and columns exist, with defaults, and the
    # user's choices (no report_tasks, the queue rows) are left as they were
    assert ran_init is False
    assert (
        db.scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name IN ('servers', 'schedules', 'schedule_fires', 'report_tasks')"
        )
        == 3
    )
    # the sample schedule is a fresh installation's only
    assert db.scalar("SELECT COUNT(*) FROM schedules") == 0
    assert db.query("SELECT task_timeout, retention_days FROM queue_configs LIMIT 1") == [
        {"task_timeout": 0, "retention_days": 0}
    ]
    assert db.scalar("SELECT COUNT(*) FROM queue_configs") == queues
    # scan_interval takes fractions now and kept its values; the counters
    # begin with the finished rows already there, once
    assert db.query(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = DATABASE() "
        "AND table_name = 'queue_configs' AND column_name = 'scan_interval'"
    ) == [{"data_type": "double"}]
    assert db.scalar("SELECT scan_interval FROM queue_configs WHERE queue_name = 'email_queue'") == 3
    assert db.query(
        "SELECT done, failed, cancelled FROM queue_minute_counts WHERE table_name = 'email_tasks'"
    ) == [{"done": 20, "failed": 20, "cancelled": 20}]
    ensure_schema(config.load(write_config(tmp_path, db), environ={}))
    assert db.scalar("SELECT SUM(done) FROM queue_minute_counts") == 20

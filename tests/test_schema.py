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
    counts = {table: db.scalar(f"SELECT COUNT(*) FROM {table}")
              for table in ("queue_configs", "email_tasks", "data_sync_tasks", "report_tasks")}
    # When it runs again
    for statement in split_statements(INIT_SQL.read_text()):
        db.execute(statement)
    # Then nothing is duplicated
    assert counts == {table: db.scalar(f"SELECT COUNT(*) FROM {table}") for table in counts}
    assert counts["queue_configs"] == 3 and counts["email_tasks"] == 2


def test_admin_task_table_ddl_matches_init_sql():
    script = INIT_SQL.read_text()
    [email_tasks] = [s for s in split_statements(script) if "CREATE TABLE IF NOT EXISTS email_tasks" in s]
    ours = admin_store.TASK_TABLE_DDL.format(table="email_tasks")
    assert normalise(ours) == normalise(email_tasks)

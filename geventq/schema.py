"""Creating the database and applying init.sql when queue_configs is missing."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from loguru import logger

from geventq import store
from geventq.config import Config
from geventq.db import Database, Nodes, missing_table_skipped, quote_table


def find_init_sql() -> Traversable:
    """init.sql: inside the installed package (the wheel maps the repository's
    init.sql to geventq/init.sql), or at the root of a clone. There is one
    init.sql in the repository; the wheel's is a copy made at build time."""
    packaged = resources.files("geventq") / "init.sql"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "init.sql"


INIT_SQL = find_init_sql()


# geventq's own tables, created on an existing installation too when a newer
# release added them (CREATE TABLE IF NOT EXISTS in init.sql, so idempotent).
OWN_TABLES = frozenset(
    {
        "queue_configs",
        "servers",
        "queue_state",
        "queue_rate_window",
        "task_cancels",
        "schedules",
        "schedule_fires",
        "named_locks",
        "queue_minute_counts",
    }
)
_CREATE_TABLE = re.compile(r"^CREATE\s+TABLE\s+IF\s+NOT\s+EXISTS\s+`?(\w+)`?", re.I)


def split_statements(script: str) -> list[str]:
    """init.sql's statements: `--` comment lines dropped, split on `;` at line end."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in re.split(r";\s*$", "\n".join(lines), flags=re.M) if part.strip()]


# A statement's verb and table, for progress lines: "INSERT IGNORE INTO `t`" -> insert, t.
_STATEMENT_HEAD = re.compile(
    r"^(\w+)\b.*?\b(?:TABLE|INTO|FROM)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?`?(\w+)", re.I | re.S
)


def statement_groups(statements: list[str]) -> list[tuple[str, list[str]]]:
    """Consecutive statements with the same verb and table, as one step with a label."""
    groups: list[tuple[str, list[str]]] = []
    for statement in statements:
        match = _STATEMENT_HEAD.match(statement)
        label = f"{match.group(1).lower()} {match.group(2)}" if match else statement.split(None, 1)[0].lower()
        if groups and groups[-1][0] == label:
            groups[-1][1].append(statement)
        else:
            groups.append((label, [statement]))
    return groups


def apply_script(cur, script_path: Traversable) -> None:
    """Run init.sql, a progress line per step."""
    groups = statement_groups(split_statements(script_path.read_text(encoding="utf-8")))
    for number, (label, statements) in enumerate(groups, 1):
        logger.info(
            "{} [{}/{}] {}{}",
            script_path.name,
            number,
            len(groups),
            label,
            f" ({len(statements)} statements)" if len(statements) > 1 else "",
        )
        store.run_script(cur, statements)


def ensure_schema(config: Config, nodes: Nodes | None = None, script_path: Traversable = INIT_SQL) -> bool:
    """Create the configured database and apply init.sql when queue_configs
    is missing; on an existing database create geventq's own tables and
    columns that newer releases introduced. True if init.sql ran whole."""
    name = config.database.database
    server = Database(config.database, database=None, size=1, name="bootstrap", nodes=nodes)
    try:
        with server.cursor() as cur:
            store.create_database(cur, name)
            present = store.table_exists(cur, name, "queue_configs")
    finally:
        server.close()
    db = Database(config.database, size=1, name="schema", nodes=nodes)
    try:
        with db.cursor() as cur:
            if present:
                _create_missing_own_tables(cur, script_path, name)
            else:
                logger.info("applying {} to database {}", script_path.name, name)
                apply_script(cur, script_path)
            _add_missing_columns(cur)
            _widen_columns(cur)
    finally:
        db.close()
    return not present


def own_table_statements(script: str) -> dict[str, str]:
    """init.sql's CREATE TABLE statements of geventq's own tables, by table.
    The sample task tables and rows are a fresh installation's only."""
    creates = {}
    for statement in split_statements(script):
        match = _CREATE_TABLE.match(statement)
        if match and match.group(1).lower() in OWN_TABLES:
            creates[match.group(1).lower()] = statement
    return creates


def _create_missing_own_tables(cur, script_path: Traversable, database: str) -> None:
    for table, statement in own_table_statements(script_path.read_text(encoding="utf-8")).items():
        if not store.table_exists(cur, database, table):
            logger.info("creating table {} (new in this release)", table)
            store.run_script(cur, [statement])
            if table == "queue_minute_counts":
                _backfill_outcome_counts(cur)


def _backfill_outcome_counts(cur) -> None:
    """The counters start where an older release leaves off: the finished
    rows already in each queue's table are counted once, as totals (one
    scan of each table, at the upgrade only)."""
    for queue in store.list_queue_configs(cur):
        with missing_table_skipped():
            table = quote_table(queue["table_name"], None)
            counted = store.backfill_outcome_counts(cur, table, queue["table_name"])
            logger.info("counted {} finished tasks already in {}", counted, queue["table_name"])


def _widen_columns(cur) -> None:
    for (table, column), (data_type, _) in store.WIDENED_COLUMNS.items():
        if store.column_type(cur, table, column) not in (None, data_type):
            logger.info("widening column {}.{} to {}", table, column, data_type)
            store.widen_column(cur, table, column)


def _add_missing_columns(cur) -> None:
    existing: dict[str, set[str]] = {}
    for table, column in store.NEW_COLUMNS:
        if table not in existing:
            existing[table] = store.table_columns(cur, table)
        if column not in existing[table]:
            logger.info("adding column {}.{}", table, column)
            store.add_column(cur, table, column)

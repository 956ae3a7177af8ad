"""Sample handler "data_sync": copy a table's rows to another database on the
same MySQL/MariaDB server.

task_params:
    table_name  the table to copy (required; letters, digits, underscores)
    target_db   the database to copy into (required; created when missing,
                and so is the table, as `CREATE TABLE ... LIKE` the source)
    source_db   the database to copy from (default: the configured database)
    sync_type   "full" (default): make the target's rows equal the source's;
                "incremental": copy only rows whose id is above the target's
                MAX(id) (updates and deletes of older rows are not carried over)
    batch_size  rows per batch, 1 to 100000 (default 1000)

The table needs an integer `id` column with a unique index of its own (its
primary key, typically): batches are keyset-paginated by it
(`WHERE id > last ORDER BY id LIMIT n`), which stays fast on any table size,
where OFFSET would rescan every earlier row.

Each batch is one upsert (`INSERT ... ON DUPLICATE KEY UPDATE`), so every
statement is idempotent and an attempt that died half-way is simply run again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from geventq.db import IDENTIFIER, quote_database
from geventq.errors import PermanentFailure
from geventq.handlers import JobContext, task_handler
from geventq.params import json_type, require_object

KNOWN_PARAMS = ("table_name", "source_db", "target_db", "sync_type", "batch_size")
SYNC_TYPES = ("full", "incremental")
MAX_BATCH_SIZE = 100_000
INTEGER_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint"})
# Generated columns are computed by the target itself and refuse inserted values.
# (MySQL 8 marks expression defaults "DEFAULT_GENERATED": those are ordinary columns.)
GENERATED = re.compile(r"\b(VIRTUAL|STORED|PERSISTENT) GENERATED\b", re.IGNORECASE)


@dataclass(frozen=True)
class SyncRequest:
    table: str
    source_db: str
    target_db: str
    sync_type: str
    batch_size: int

    @property
    def source(self) -> str:
        return f"{quote_database(self.source_db)}.{quote_database(self.table)}"

    @property
    def target(self) -> str:
        return f"{quote_database(self.target_db)}.{quote_database(self.table)}"


@dataclass(frozen=True)
class Columns:
    """The columns a sync copies, quoted for SQL, and the key it pages by."""

    names: tuple[str, ...]
    id_name: str

    @property
    def select_list(self) -> str:
        return ", ".join(map(quote_column, self.names))

    @property
    def quoted_id(self) -> str:
        return quote_column(self.id_name)


def quote_column(name: str) -> str:
    """Backtick-quote a column name read from information_schema. Such names
    are legitimate whatever they contain, so they are escaped rather than
    pattern-checked: backticks doubled for SQL, `%` doubled because PyMySQL
    formats parameters into the statement with `%`."""
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


# --- params ---------------------------------------------------------------------


def parse_sync_params(params: Any, default_source_db: str) -> SyncRequest:
    """Check task_params; raise PermanentFailure("<field>: <why>") on the first problem."""
    params = require_object(params, KNOWN_PARAMS)
    request = SyncRequest(
        table=_identifier(params, "table_name"),
        source_db=_identifier(params, "source_db", default=default_source_db),
        target_db=_identifier(params, "target_db"),
        sync_type=_sync_type(params.get("sync_type", "full")),
        batch_size=_batch_size(params.get("batch_size", 1000)),
    )
    # Case-insensitive: on a case-insensitive file system `A` and `a` are one
    # database, and a full sync onto itself would be pointless at best.
    if request.source_db.lower() == request.target_db.lower():
        raise PermanentFailure(
            f"target_db: must differ from source_db ({request.source_db}): "
            "a table cannot be synced onto itself"
        )
    return request


def _identifier(params: dict[str, Any], field: str, default: str | None = None) -> str:
    """A database or table name, checked before it is ever quoted into SQL."""
    value = params.get(field, default)
    if value is None:
        raise PermanentFailure(f"{field}: required")
    if not isinstance(value, str) or not IDENTIFIER.match(value):
        shown = repr(value[:80]) if isinstance(value, str) else json_type(value)
        raise PermanentFailure(
            f"{field}: must be a name of a letter or underscore then up to 63 letters, "
            f"digits or underscores, got {shown}"
        )
    return value


def _sync_type(value: Any) -> str:
    if value not in SYNC_TYPES:
        raise PermanentFailure(f"sync_type: must be one of {', '.join(SYNC_TYPES)}, got {value!r}")
    return value


def _batch_size(value: Any) -> int:
    # bool is an int subclass, but JSON true is not a batch size
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise PermanentFailure(f"batch_size: must be an integer from 1 to {MAX_BATCH_SIZE}, got {value!r}")
    return value


# --- schema ---------------------------------------------------------------------


def table_columns(cur: Any, database: str, table: str) -> list[dict[str, Any]]:
    """Name, type and extra of each column, in table order; [] if no such table."""
    cur.execute(
        "SELECT COLUMN_NAME AS name, DATA_TYPE AS type, EXTRA AS extra "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION",
        (database, table),
    )
    return list(cur.fetchall())


def has_unique_index_on(cur: Any, database: str, table: str, column: str) -> bool:
    """True when some unique index (the primary key included) has `column` as
    its only column: keyset paging skips rows if the key repeats."""
    cur.execute(
        "SELECT INDEX_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0 "
        "GROUP BY INDEX_NAME HAVING COUNT(*) = 1 AND MAX(COLUMN_NAME) = %s",
        (database, table, column),
    )
    return cur.fetchone() is not None


def source_columns(cur: Any, request: SyncRequest) -> Columns:
    """The columns to copy; PermanentFailure when the table is missing or
    has no integer, uniquely indexed `id`."""
    columns = table_columns(cur, request.source_db, request.table)
    if not columns:
        raise PermanentFailure(
            f"table_name: no table {request.table} in database {request.source_db} (source_db)"
        )
    id_column = next((c for c in columns if c["name"].lower() == "id"), None)
    if (
        id_column is None
        or id_column["type"].lower() not in INTEGER_TYPES
        or not has_unique_index_on(cur, request.source_db, request.table, id_column["name"])
    ):
        raise PermanentFailure(
            f"table_name: {request.source_db}.{request.table} needs an integer `id` column "
            "with a unique index of its own (its primary key) to be synced in batches"
        )
    copied = tuple(c["name"] for c in columns if not GENERATED.search(c["extra"] or ""))
    return Columns(names=copied, id_name=id_column["name"])


def prepare_target(cur: Any, ctx: JobContext, request: SyncRequest, columns: Columns) -> bool:
    """Create the target database and table when missing; refuse a target
    table that lacks some of the copied columns. True when it was created."""
    existing = table_columns(cur, request.target_db, request.table)
    if not existing:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {quote_database(request.target_db)}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {request.target} LIKE {request.source}")
        ctx.log.info("created {}.{} like the source", request.target_db, request.table)
        return True
    have = {c["name"].lower() for c in existing}
    missing = [name for name in columns.names if name.lower() not in have]
    if missing:
        raise PermanentFailure(
            f"target_db: {request.target_db}.{request.table} exists but lacks the source's "
            f"columns {', '.join(missing)}"
        )
    return False


# --- copying --------------------------------------------------------------------


def target_max_id(cur: Any, request: SyncRequest, columns: Columns) -> Any:
    cur.execute(f"SELECT MAX({columns.quoted_id}) AS max_id FROM {request.target}")
    return cur.fetchone()["max_id"]


def fetch_batch(cur: Any, request: SyncRequest, columns: Columns, after: Any) -> list[dict[str, Any]]:
    """The next `batch_size` rows by id, after id `after` (None: from the start)."""
    select = f"SELECT {columns.select_list} FROM {request.source}"
    if after is None:
        cur.execute(f"{select} ORDER BY {columns.quoted_id} LIMIT %s", (request.batch_size,))
    else:
        cur.execute(
            f"{select} WHERE {columns.quoted_id} > %s ORDER BY {columns.quoted_id} LIMIT %s",
            (after, request.batch_size),
        )
    return list(cur.fetchall())


def upsert_statement(request: SyncRequest, columns: Columns) -> str:
    """One row's INSERT; PyMySQL's executemany() folds the rows of a batch into
    multi-row INSERTs of up to ~1 MB each."""
    quoted = [quote_column(name) for name in columns.names]
    placeholders = ", ".join(["%s"] * len(quoted))
    # VALUES(col) rather than MySQL 8's `AS new` alias: MariaDB only has the former.
    updates = ", ".join(f"{col} = VALUES({col})" for col in quoted)
    return (
        f"INSERT INTO {request.target} ({', '.join(quoted)}) VALUES ({placeholders}) "
        f"ON DUPLICATE KEY UPDATE {updates}"
    )


def copy_in_batches(
    cur: Any, ctx: JobContext, request: SyncRequest, columns: Columns, after: Any
) -> tuple[int, int]:
    """Copy every source row with id > `after`; returns (rows, batches)."""
    upsert = upsert_statement(request, columns)
    copied = batches = 0
    while True:
        rows = fetch_batch(cur, request, columns, after)
        if not rows:
            break
        cur.executemany(upsert, [tuple(row[name] for name in columns.names) for row in rows])
        copied, batches = copied + len(rows), batches + 1
        after = rows[-1][columns.id_name]
        ctx.log.info("batch {}: {} rows up to id {} ({} so far)", batches, len(rows), after, copied)
        if len(rows) < request.batch_size:
            break
    return copied, batches


def delete_rows_missing_from_source(cur: Any, request: SyncRequest, columns: Columns) -> int:
    """Finish a full sync: remove target rows whose id the source no longer has.

    Upsert-then-delete rather than TRUNCATE-then-copy: the target never goes
    empty under its readers, an attempt that fails half-way leaves complete
    rows rather than a half-filled table, and no DDL (TRUNCATE commits, needs
    the DROP privilege and resets AUTO_INCREMENT) is involved."""
    cur.execute(
        f"DELETE t FROM {request.target} AS t LEFT JOIN {request.source} AS s "
        f"ON s.{columns.quoted_id} = t.{columns.quoted_id} WHERE s.{columns.quoted_id} IS NULL"
    )
    return cur.rowcount


# --- the handler ----------------------------------------------------------------


@task_handler("data_sync")
def sync_table(ctx: JobContext) -> dict[str, Any]:
    request = parse_sync_params(ctx.params, ctx.config.database.database)
    ctx.log.info(
        "{} sync of {}.{} into {}.{}, {} rows per batch",
        request.sync_type,
        request.source_db,
        request.table,
        request.target_db,
        request.table,
        request.batch_size,
    )
    with ctx.db.cursor() as cur:
        columns = source_columns(cur, request)
        created = prepare_target(cur, ctx, request, columns)
        after = target_max_id(cur, request, columns) if request.sync_type == "incremental" else None
        if after is not None:
            ctx.log.info("target holds ids up to {}: copying the rows above", after)
        copied, batches = copy_in_batches(cur, ctx, request, columns, after)
        deleted = delete_rows_missing_from_source(cur, request, columns) if request.sync_type == "full" else 0
    ctx.log.info("done: {} rows copied in {} batches, {} stale rows deleted", copied, batches, deleted)
    return {
        "sync_type": request.sync_type,
        "copied": copied,
        "batches": batches,
        "deleted": deleted,
        "created_target": created,
    }

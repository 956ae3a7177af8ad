"""The benchmark's own connection to MariaDB: the bench database, fast
inserts, and figures read on the database clock.

The bench talks to the server with plain PyMySQL, as a user's script would,
never through geventq.db: it must not share code paths with what it
measures. Every statement it sends is counted by kind, so that the SQL
statements per task can subtract them from the server's global counters.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pymysql

from geventq.schema import INIT_SQL, split_statements

# The counters of SHOW GLOBAL STATUS that the statements-per-task figure reads.
STATUS_COUNTERS = (
    "Com_select",
    "Com_update",
    "Com_insert",
    "Com_delete",
    "Com_commit",
    "Com_begin",
    "Com_rollback",
    "Com_set_option",
    "Questions",
    "Connections",
    "Innodb_buffer_pool_pages_dirty",
    "Innodb_history_list_length",
    "Innodb_buffer_pool_reads",
)

# First word of a statement -> the Com_ counter the server bumps for it.
_VERB_COUNTER = {
    "SELECT": "Com_select",
    "UPDATE": "Com_update",
    "INSERT": "Com_insert",
    "DELETE": "Com_delete",
    "COMMIT": "Com_commit",
    "BEGIN": "Com_begin",
    "ROLLBACK": "Com_rollback",
    "SET": "Com_set_option",
    "SHOW": "Com_show_status",
}

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
INSERT_CHUNK = 5000


def ident(name: str) -> str:
    """Backtick-quote a name the bench itself chose (never user input)."""
    if not IDENTIFIER.match(name):
        raise ValueError(f"bad identifier {name!r}")
    return f"`{name}`"


@dataclass(frozen=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""


LIMIT_COLUMNS = {"global_max_workers", "rate_limit", "rate_period", "key_max_workers"}


class BenchDB:
    """One persistent autocommit connection, every statement counted."""

    def __init__(self, server: Server, database: str):
        self.server = server
        ident(database)  # checked once: it is quoted into DROP/CREATE DATABASE
        self.database = database
        self.sent: Counter[str] = Counter()
        self._conn: pymysql.connections.Connection | None = None

    # --- plumbing --------------------------------------------------------------

    def connect(self, database: str | None) -> pymysql.connections.Connection:
        s = self.server
        return pymysql.connect(
            host=s.host,
            port=s.port,
            user=s.user,
            password=s.password,
            database=database,
            autocommit=True,
            charset="utf8mb4",
            cursorclass=pymysql.cursors.DictCursor,
            read_timeout=600,
        )

    @property
    def conn(self) -> pymysql.connections.Connection:
        if self._conn is None or not self._conn.open:
            self._conn = self.connect(self.database)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._conn.open:
            self._conn.close()
        self._conn = None

    def _count(self, sql: str) -> None:
        verb = sql.lstrip().split(None, 1)[0].upper()
        self.sent[_VERB_COUNTER.get(verb, f"other:{verb}")] += 1
        self.sent["Questions"] += 1

    def execute(self, sql: str, args: Any = None) -> int:
        self._count(sql)
        with self.conn.cursor() as cur:
            return cur.execute(sql, args)

    def query(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        self._count(sql)
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def insert(self, sql: str, args: Any = None) -> int:
        """One INSERT; the new row's id."""
        self._count(sql)
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.lastrowid

    def scalar(self, sql: str, args: Any = None) -> Any:
        rows = self.query(sql, args)
        return next(iter(rows[0].values())) if rows else None

    def begin(self) -> None:
        self._count("BEGIN")
        self.conn.begin()

    def commit(self) -> None:
        self._count("COMMIT")
        self.conn.commit()

    # --- the bench database ------------------------------------------------------

    def recreate(self) -> None:
        """Drop and create the bench database, then apply init.sql without its
        sample queues and tasks: only the bench's queues may run."""
        with self.connect(None) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {ident(self.database)}")
            cur.execute(f"CREATE DATABASE {ident(self.database)} DEFAULT CHARACTER SET utf8mb4")
        self.close()
        for statement in split_statements(INIT_SQL.read_text(encoding="utf-8")):
            if not statement.lstrip().upper().startswith("INSERT"):
                self.execute(statement)

    def drop(self) -> None:
        self.close()
        with self.connect(None) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {ident(self.database)}")

    def reset_between_workloads(self) -> None:
        """No queue, server row or task table of an earlier workload survives."""
        for row in self.query("SELECT table_name AS t FROM queue_configs"):
            self.execute(f"DROP TABLE IF EXISTS {ident(row['t'])}")
        self.execute("DELETE FROM queue_configs")
        self.execute("DELETE FROM servers")

    def task_table(self, name: str) -> None:
        """A task table with exactly the base columns (as init.sql's tables)."""
        self.execute(f"DROP TABLE IF EXISTS {ident(name)}")
        self.execute(f"CREATE TABLE {ident(name)} LIKE email_tasks")

    def add_queue(
        self,
        queue: str,
        table: str,
        *,
        max_workers: int,
        scan_interval: float,
        server_id: str = "",
        limits: dict[str, int] | None = None,
    ) -> None:
        """`limits`: queue_configs limit columns (global_max_workers, rate_limit, ...) and their values."""
        self.task_table(table)
        limits = limits or {}
        if set(limits) - LIMIT_COLUMNS:
            raise ValueError(f"not limit columns: {sorted(set(limits) - LIMIT_COLUMNS)}")
        columns = "".join(f", {column}" for column in limits)
        self.execute(
            "INSERT INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval, "
            f"status{columns}) VALUES (%s, %s, %s, %s, %s, 1{', %s' * len(limits)})",
            (queue, table, server_id, max_workers, scan_interval, *limits.values()),
        )

    # --- inserting ---------------------------------------------------------------

    def insert_due(self, table: str, task_type: str, count: int, params: dict | None = None) -> None:
        """`count` due tasks, in multi-row INSERTs of up to 5,000 rows, all in
        one transaction so that a running executor sees them at once."""
        text = json.dumps(params or {})
        self.begin()
        for start in range(0, count, INSERT_CHUNK):
            rows = min(INSERT_CHUNK, count - start)
            values = ",".join(["(%s,%s)"] * rows)
            self.execute(
                f"INSERT INTO {ident(table)} (task_type, task_params) VALUES {values}",
                [task_type, text] * rows,
            )
        self.commit()

    def insert_finished(self, table: str, count: int) -> str:
        """`count` done tasks, one a second going back from 40 days ago, in
        one INSERT … SELECT from MariaDB's sequence engine (doubling the table
        where it is missing). All in the past, as finished history is: counted
        forward, ten million seconds would reach 75 days into the future, and
        every task W1 finishes would land in the middle of the (status,
        schedule_time) index's finished range instead of at its end."""
        sql = (
            f"INSERT INTO {ident(table)} (task_type, task_params, status, schedule_time, "
            "start_time, end_time, server_id, created_at) "
            "SELECT 'bench_noop', '{}', 2, t, t, t + INTERVAL 0.002 SECOND, 'bench-old', t "
            "FROM (SELECT NOW(3) - INTERVAL 40 DAY - INTERVAL seq SECOND AS t "
            f"FROM seq_1_to_{int(count)}) AS s"
        )
        try:
            self.execute(sql)
            return "INSERT … SELECT FROM seq_1_to_N"
        except pymysql.err.ProgrammingError:
            self._insert_finished_by_doubling(table, count)
            return "INSERT … SELECT doubling"

    def _insert_finished_by_doubling(self, table: str, count: int) -> None:
        t = ident(table)
        self.execute(
            f"INSERT INTO {t} (task_type, task_params, status, schedule_time, start_time, "
            "end_time, server_id, created_at) VALUES ('bench_noop', '{}', 2, "
            "NOW(3) - INTERVAL 40 DAY, NOW(3) - INTERVAL 40 DAY, NOW(3) - INTERVAL 40 DAY, "
            "'bench-old', NOW(3) - INTERVAL 40 DAY)"
        )
        have = 1
        while have < count:
            take = min(have, count - have)
            self.execute(
                f"INSERT INTO {t} (task_type, task_params, status, schedule_time, start_time, "
                "end_time, server_id, created_at) SELECT task_type, task_params, status, "
                "schedule_time - INTERVAL id SECOND, start_time, end_time, server_id, created_at "
                f"FROM {t} WHERE status = 2 LIMIT %s",
                (take,),
            )
            have += take

    # --- reading -------------------------------------------------------------------

    def now(self) -> Any:
        return self.scalar("SELECT NOW(3) AS now")

    def unfinished(self, table: str) -> int:
        """Tasks still pending or running: a range on the (status, schedule_time)
        index, cheap even beside a million finished rows."""
        return int(self.scalar(f"SELECT COUNT(*) AS n FROM {ident(table)} WHERE status IN (0, 1)"))

    def global_status(self) -> dict[str, int]:
        names = ",".join(f"'{name}'" for name in STATUS_COUNTERS)
        rows = self.query(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
        return {row["Variable_name"]: int(row["Value"]) for row in rows}

    def other_clients(self) -> int:
        """Client connections other than ours: their statements would pollute
        the global counters."""
        return int(
            self.scalar(
                "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
                "WHERE ID <> CONNECTION_ID() AND COMMAND NOT IN ('Daemon', 'Binlog Dump') "
                "AND USER NOT IN ('system user', 'event_scheduler')"
            )
        )

    def index_on(self, table: str, columns: Sequence[str]) -> str | None:
        """The name of the index whose leading columns are `columns`."""
        rows = self.query(f"SHOW INDEX FROM {ident(table)}")
        by_name: dict[str, list[tuple[int, str]]] = {}
        for row in rows:
            by_name.setdefault(row["Key_name"], []).append((row["Seq_in_index"], row["Column_name"]))
        for name, parts in by_name.items():
            if [column for _, column in sorted(parts)][: len(columns)] == list(columns):
                return name
        return None

"""The sample handlers (handlers/email.py, data_sync.py, report.py) against the
real MariaDB and a real SMTP server (aiosmtpd) on a free local port."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pymysql
import pytest
from loguru import logger

from geventq import Status
from geventq import config as geventq_config
from geventq.config import Config
from geventq.db import Database
from geventq.errors import PermanentFailure
from geventq.handlers import JobContext, load_handlers
from tests.smtpinbox import Inbox, running_inbox

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
MARIADB = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
SENDER = "geventq <geventq@example.org>"
UNUSED_DB = "geventq_test_never_created"  # for tests that must fail before any query


# --- infrastructure: MariaDB, SMTP, config, job context --------------------------


# Every test needs MariaDB: the shared fixture skips locally, fails in CI.
pytestmark = pytest.mark.usefixtures("mariadb")


def admin_connection(database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(
        database=database, autocommit=True, read_timeout=30, cursorclass=pymysql.cursors.DictCursor, **MARIADB
    )


def sql_statements(script: str) -> Iterator[str]:
    """init.sql's statements: `--` lines dropped, split at a `;` ending a line."""
    pending: list[str] = []
    for line in script.splitlines():
        if line.lstrip().startswith("--"):
            continue
        pending.append(line)
        if line.rstrip().endswith(";"):
            yield "\n".join(pending).strip().rstrip(";")
            pending = []


@dataclass
class ScratchDatabase:
    name: str
    conn: pymysql.connections.Connection

    @property
    def copy_name(self) -> str:
        """The sync target of this test; the fixture drops it too."""
        return f"{self.name}_copy"

    def execute(self, sql: str, args: Any = None) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql, rows)


@pytest.fixture
def database() -> Iterator[ScratchDatabase]:
    """A fresh database with init.sql applied, dropped afterwards."""
    name = f"geventq_test_{uuid.uuid4().hex[:12]}"
    conn = admin_connection()
    try:
        db = ScratchDatabase(name, conn)
        db.execute(f"CREATE DATABASE `{name}`")
        conn.select_db(name)
        for statement in sql_statements((REPO_ROOT / "init.sql").read_text(encoding="utf-8")):
            db.execute(statement)
        yield db
    finally:
        for dropped in (name, f"{name}_copy"):
            conn.cursor().execute(f"DROP DATABASE IF EXISTS `{dropped}`")
        conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    with running_inbox() as server:
        yield server


@pytest.fixture
def inbox(smtp_server) -> Inbox:
    smtp_server[0].deliveries.clear()
    smtp_server[0].logins.clear()
    return smtp_server[0]


def make_config(folder: Path, database: str, smtp_port: int, **smtp: Any) -> Config:
    """A Config loaded the way the executor loads one, from a config.json in
    `folder` (so config.base_dir is `folder`), ignoring the environment."""
    settings = {
        "database": {
            "host": MARIADB["host"],
            "port": MARIADB["port"],
            "username": MARIADB["user"],
            "password": MARIADB["password"],
            "database": database,
            "read_timeout": 30,
        },
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "sender": SENDER, "timeout": 5, **smtp},
    }
    path = folder / "config.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    return geventq_config.load(path, environ={})


@pytest.fixture
def config(tmp_path, database, smtp_server) -> Config:
    return make_config(tmp_path, database.name, smtp_server[1])


@pytest.fixture
def offline_config(tmp_path, smtp_server) -> Config:
    """For tests that must fail on their params before touching MySQL."""
    return make_config(tmp_path, UNUSED_DB, smtp_server[1])


@pytest.fixture(scope="module")
def registry() -> dict[str, Any]:
    return load_handlers([str(HANDLERS_DIR)])


@pytest.fixture
def job_log() -> Iterator[list[str]]:
    """The lines handlers write through ctx.log during the test."""
    lines: list[str] = []

    def keep(message: Any) -> None:
        lines.append(f"{message.record['level'].name} {message.record['message']}")

    sink = logger.add(keep, filter=lambda record: "log_id" in record["extra"], level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def run(registry, job_log):
    """run(config, task_type, params, task_id=1) calls the registered handler
    with a JobContext built like the executor's."""

    def run_handler(cfg: Config, task_type: str, params: Any, task_id: int = 1) -> Any:
        db = Database(cfg.database, size=2)
        ctx = JobContext(
            task_id=task_id,
            task_type=task_type,
            params=params,
            job_param=json.dumps(params),
            queue_name=f"{task_type}_queue",
            table_name=f"{task_type}_tasks",
            retry_count=0,
            max_retries=3,
            schedule_time=datetime.now(),
            server_id="test-server",
            log_id=f"{task_type}_tasks-{task_id}",
            log=logger.bind(log_id=f"{task_type}_tasks-{task_id}"),
            config=cfg,
            db=db,
            created_at=datetime.now(),
        )
        try:
            return registry[task_type](ctx)
        finally:
            db.close()

    return run_handler


def test_the_three_sample_types_are_registered(registry):
    assert {"email", "data_sync", "report"} <= set(registry)
    assert all(callable(registry[name]) for name in ("email", "data_sync", "report"))


# --- email -----------------------------------------------------------------------


def test_text_email_arrives_with_headers_and_bcc_only_in_the_envelope(run, offline_config, inbox):
    # Given
    params = {
        "to": ["Alice Ünicode <alice@example.com>", "bob@example.com"],
        "cc": "carol@example.com",
        "bcc": ["dave@example.com"],
        "reply_to": "help@example.com",
        "subject": "Grüße from geventq",
        "body": "Hello,\nthis is plain text.\n",
    }
    # When
    result = run(offline_config, "email", params)
    # Then
    assert len(inbox.deliveries) == 1
    delivery = inbox.deliveries[0]
    assert delivery.mail_from == "geventq@example.org"
    assert delivery.rcpt_tos == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
    ]
    message = delivery.message
    assert message["From"] == SENDER
    assert [a.addr_spec for a in message["To"].addresses] == ["alice@example.com", "bob@example.com"]
    assert message["To"].addresses[0].display_name == "Alice Ünicode"
    assert message["Cc"] == "carol@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert "Bcc" not in message
    assert message["Subject"] == "Grüße from geventq"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n") == "Hello,\nthis is plain text.\n"
    assert result["sent"] is True and result["reply"] == "250 2.0.0 Ok: queued as TEST123"


def test_the_seed_documents_email_task_arrives_with_its_content(run, offline_config, inbox):
    """The original system's README enqueues e-mail with `content`, not `body`."""
    params = {
        "to": ["user@example.com"],
        "subject": "测试邮件",
        "content": "这是一封测试邮件",
        "type": "html",
    }
    run(offline_config, "email", params)
    [delivery] = inbox.deliveries
    assert delivery.rcpt_tos == ["user@example.com"]
    assert delivery.message["Subject"] == "测试邮件"
    assert delivery.message.get_body(("html",)).get_content().strip() == "这是一封测试邮件"


def test_html_email_is_multipart_with_a_text_fallback(run, offline_config, inbox):
    html = "<h1>Digest</h1><p>Tom &amp; Jerry</p><style>p {color: red}</style>"
    run(offline_config, "email", {"to": "bob@example.com", "subject": "Digest", "body": html, "type": "html"})

    message = inbox.deliveries[0].message
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("html",)).get_content().strip() == html
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Digest\n\nTom & Jerry\n"


def test_login_uses_the_configured_credentials_and_never_logs_the_password(
    run, tmp_path, smtp_server, inbox, job_log
):
    cfg = make_config(tmp_path, UNUSED_DB, smtp_server[1], username="mailer", password="s3cret-pw")

    run(cfg, "email", {"to": "bob@example.com", "subject": "Hi", "body": "x"})

    assert inbox.logins == [("mailer", "s3cret-pw")]
    assert len(inbox.deliveries) == 1
    assert job_log and not any("s3cret-pw" in line for line in job_log)


def test_sample_dry_run_tasks_render_into_the_log_and_send_nothing(run, config, database, inbox, job_log):
    # Given the sample e-mails of init.sql, both dry runs
    samples = database.execute("SELECT task_params FROM email_tasks ORDER BY id")
    assert len(samples) == 2
    # When
    results = [run(config, "email", json.loads(row["task_params"])) for row in samples]
    # Then
    assert inbox.deliveries == []
    assert [result["sent"] for result in results] == [False, False]
    log = "\n".join(job_log)
    assert "Subject: Welcome to geventq" in log and "Hello Alice!" in log
    assert "Content-Type: text/html" in log and "<h1>Digest</h1>" in log


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"subject": "s", "body": "b"}, "to"),
        ({"to": [], "subject": "s", "body": "b"}, "to"),
        ({"to": "not an address", "subject": "s", "body": "b"}, "to"),
        ({"to": "a@example.com b@example.com", "subject": "s", "body": "b"}, "to"),
        ({"to": [42], "subject": "s", "body": "b"}, "to"),
        ({"to": {"a": "a@example.com"}, "subject": "s", "body": "b"}, "to"),
        ({"to": "a@example.com\r\nBcc: spy@example.com", "subject": "s", "body": "b"}, "to"),
        ({"to": "a@example.com", "cc": "nope", "subject": "s", "body": "b"}, "cc"),
        ({"to": "a@example.com", "bcc": [None], "subject": "s", "body": "b"}, "bcc"),
        ({"to": "a@example.com", "reply_to": "@example.com", "subject": "s", "body": "b"}, "reply_to"),
        ({"to": "a@example.com", "body": "b"}, "subject"),
        ({"to": "a@example.com", "subject": 5, "body": "b"}, "subject"),
        ({"to": "a@example.com", "subject": "  ", "body": "b"}, "subject"),
        ({"to": "a@example.com", "subject": "one\nBcc: spy@example.com", "body": "b"}, "subject"),
        ({"to": "a@example.com", "subject": "s"}, "content"),
        ({"to": "a@example.com", "subject": "s", "content": ["b"]}, "content"),
        ({"to": "a@example.com", "subject": "s", "body": ["b"]}, "body"),
        ({"to": "a@example.com", "subject": "s", "content": "c", "body": "b"}, "content, body"),
        ({"to": "a@example.com", "subject": "s", "body": "b", "type": "markdown"}, "type"),
        ({"to": "a@example.com", "subject": "s", "body": "b", "dry_run": "yes"}, "dry_run"),
        ({"to": "a@example.com", "subjet": "s", "body": "b"}, "subjet"),
        (["a@example.com"], "params"),
        (None, "params"),
    ],
)
def test_bad_email_params_fail_permanently_naming_the_field(run, offline_config, inbox, params, field):
    with pytest.raises(PermanentFailure, match=rf"^{field}: "):
        run(offline_config, "email", params)
    assert inbox.deliveries == []


def test_smtp_server_down_is_a_retryable_error(run, tmp_path):
    cfg = make_config(tmp_path, UNUSED_DB, free_port())  # nothing listens there

    with pytest.raises(OSError) as raised:
        run(cfg, "email", {"to": "bob@example.com", "subject": "s", "body": "b"})
    assert not isinstance(raised.value, PermanentFailure)


def test_refused_recipients_5xx_is_permanent_4xx_retryable_partial_sent(run, offline_config, inbox, job_log):
    base = {"subject": "s", "body": "b"}

    with pytest.raises(PermanentFailure, match=r"^recipients: .*nobody@example.com.*550"):
        run(offline_config, "email", {**base, "to": "nobody@example.com"})
    with pytest.raises(Exception) as raised:
        run(offline_config, "email", {**base, "to": "busy@example.com"})
    assert not isinstance(raised.value, PermanentFailure)

    result = run(offline_config, "email", {**base, "to": ["alice@example.com", "nobody@example.com"]})
    assert result["refused"] == ["nobody@example.com"]
    assert [d.rcpt_tos for d in inbox.deliveries] == [["alice@example.com"]]
    assert any(line.startswith("WARNING") and "nobody@example.com" in line for line in job_log)


def test_email_module_does_not_shadow_the_standard_library_email_package():
    # handlers.py adds handlers/ to sys.path, where handlers/email.py must not
    # hide the stdlib package; in a fresh interpreter nothing has imported it yet.
    code = (
        "import sys; from geventq.handlers import load_handlers; load_handlers([sys.argv[1]]); "
        "import email.message, smtplib; print(email.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(HANDLERS_DIR)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() != (HANDLERS_DIR / "email.py").resolve()


# --- data_sync -------------------------------------------------------------------

ITEMS_TABLE = """
CREATE TABLE items (
  id       BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name     VARCHAR(50)     NOT NULL,
  qty      INT             NULL,
  price    DECIMAL(10, 2)  NOT NULL,
  note     TEXT            NULL,
  updated  DATETIME(3)     NOT NULL,
  name_len INT AS (CHAR_LENGTH(name)) VIRTUAL
)"""


def add_items(db: ScratchDatabase, first: int, count: int) -> None:
    rows = [
        (
            f"item-{n}-ü",
            None if n % 7 == 0 else n % 100,
            f"{n % 1000}.{n % 100:02d}",
            None if n % 5 == 0 else f"note {n}",
            f"2024-01-01 00:00:{n % 60:02d}.{n % 1000:03d}",
        )
        for n in range(first, first + count)
    ]
    db.executemany("INSERT INTO items (name, qty, price, note, updated) VALUES (%s, %s, %s, %s, %s)", rows)


def items_checksum(db: ScratchDatabase, database: str) -> tuple[int, int]:
    row = db.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(CRC32(CONCAT_WS('|', id, name, IFNULL(qty, 'null'), price, "
        f"IFNULL(note, 'null'), updated, name_len))), 0) AS crc FROM `{database}`.items"
    )[0]
    return row["n"], int(row["crc"])


def sync(run, cfg: Config, db: ScratchDatabase, sync_type: str) -> dict[str, Any]:
    return run(
        cfg,
        "data_sync",
        {"table_name": "items", "target_db": db.copy_name, "sync_type": sync_type, "batch_size": 1000},
    )


def test_full_sync_creates_the_target_and_copies_in_batches(run, config, database, job_log):
    # Given 2,500 rows and no target database
    database.execute(ITEMS_TABLE)
    add_items(database, 1, 2500)
    # When
    result = sync(run, config, database, "full")
    # Then
    assert result == {"sync_type": "full", "copied": 2500, "batches": 3, "deleted": 0, "created_target": True}
    assert items_checksum(database, database.copy_name) == items_checksum(database, database.name)
    assert items_checksum(database, database.name)[0] == 2500
    assert any("batch 3: 500 rows up to id 2500" in line for line in job_log)


def test_full_sync_again_carries_updates_and_deletes(run, config, database):
    # Given a synced table, then changed: rows updated, deleted and added
    database.execute(ITEMS_TABLE)
    add_items(database, 1, 2500)
    sync(run, config, database, "full")
    database.execute("UPDATE items SET qty = 999, note = 'changed' WHERE id % 100 = 0")
    database.execute("DELETE FROM items WHERE id BETWEEN 1001 AND 1010")
    add_items(database, 2501, 5)
    # When
    result = sync(run, config, database, "full")
    # Then
    assert (result["copied"], result["deleted"], result["created_target"]) == (2495, 10, False)
    assert items_checksum(database, database.copy_name) == items_checksum(database, database.name)


def test_incremental_sync_copies_only_new_rows(run, config, database):
    # Given a target already holding the first 2,500 rows (copied by an incremental run)
    database.execute(ITEMS_TABLE)
    add_items(database, 1, 2500)
    first = sync(run, config, database, "incremental")
    add_items(database, 2501, 700)
    # When
    second = sync(run, config, database, "incremental")
    # Then
    assert (first["copied"], first["batches"]) == (2500, 3)
    assert (second["copied"], second["batches"], second["deleted"]) == (700, 1, 0)
    assert items_checksum(database, database.copy_name) == items_checksum(database, database.name)
    assert items_checksum(database, database.name)[0] == 3200


def test_the_sample_data_sync_task_runs(run, config, database):
    # The sample syncs queue_configs into geventq_sync_demo; aim it at this
    # test's own target so the server's real demo database is left alone.
    params = json.loads(database.execute("SELECT task_params FROM data_sync_tasks")[0]["task_params"])
    params["target_db"] = database.copy_name

    result = run(config, "data_sync", params)

    assert result["copied"] == 3
    copied = database.execute(f"SELECT queue_name FROM `{database.copy_name}`.queue_configs ORDER BY id")
    assert [row["queue_name"] for row in copied] == ["email_queue", "data_sync_queue", "report_queue"]


@pytest.mark.parametrize(
    "table",
    [
        "CREATE TABLE items (code INT PRIMARY KEY, name TEXT)",
        "CREATE TABLE items (id VARCHAR(20) PRIMARY KEY, name TEXT)",
        "CREATE TABLE items (id INT NOT NULL, part INT NOT NULL, PRIMARY KEY (id, part))",
    ],
)
def test_a_table_without_a_unique_integer_id_is_refused(run, config, database, table):
    database.execute(table)

    with pytest.raises(PermanentFailure, match=r"^table_name: .*integer `id`"):
        sync(run, config, database, "full")


def test_a_missing_source_table_or_a_target_lacking_columns_is_refused(run, config, database):
    with pytest.raises(PermanentFailure, match=r"^table_name: no table items"):
        sync(run, config, database, "full")

    database.execute(ITEMS_TABLE)
    database.execute(f"CREATE DATABASE `{database.copy_name}`")
    database.execute(f"CREATE TABLE `{database.copy_name}`.items (id BIGINT PRIMARY KEY, name VARCHAR(50))")
    with pytest.raises(PermanentFailure, match=r"^target_db: .*lacks the source's columns qty, price"):
        sync(run, config, database, "full")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"target_db": "copy"}, "table_name"),
        ({"table_name": "items"}, "target_db"),
        ({"table_name": "items; DROP TABLE x", "target_db": "copy"}, "table_name"),
        ({"table_name": "items`", "target_db": "copy"}, "table_name"),
        ({"table_name": 5, "target_db": "copy"}, "table_name"),
        ({"table_name": "items", "target_db": "co`py"}, "target_db"),
        ({"table_name": "items", "target_db": "a.b"}, "target_db"),
        ({"table_name": "items", "target_db": "copy", "source_db": "1src"}, "source_db"),
        ({"table_name": "items", "target_db": "Same", "source_db": "same"}, "target_db"),
        ({"table_name": "items", "target_db": UNUSED_DB}, "target_db"),  # the configured database
        ({"table_name": "items", "target_db": "copy", "sync_type": "partial"}, "sync_type"),
        ({"table_name": "items", "target_db": "copy", "batch_size": 0}, "batch_size"),
        ({"table_name": "items", "target_db": "copy", "batch_size": 100_001}, "batch_size"),
        ({"table_name": "items", "target_db": "copy", "batch_size": "10"}, "batch_size"),
        ({"table_name": "items", "target_db": "copy", "batch_size": True}, "batch_size"),
        ({"table_name": "items", "target_db": "copy", "batch_size": 1.5}, "batch_size"),
        ({"tabel_name": "items", "target_db": "copy"}, "tabel_name"),
        (["items"], "params"),
    ],
)
def test_bad_data_sync_params_fail_permanently_naming_the_field(run, offline_config, params, field):
    with pytest.raises(PermanentFailure, match=rf"^{field}: "):
        run(offline_config, "data_sync", params)


# --- report ----------------------------------------------------------------------


def add_tasks(db: ScratchDatabase, table: str, statuses: list[int]) -> None:
    db.executemany(
        f"INSERT INTO {table} (task_type, task_params, status) VALUES ('x', '{{}}', %s)",
        [(int(status),) for status in statuses],
    )


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_report_counts_tasks_by_queue_and_status(run, config, database, tmp_path, job_log):
    # Given tasks in several statuses, a queue in `database.table` form, and
    # queues whose table is gone or misnamed
    for table in ("email_tasks", "data_sync_tasks", "report_tasks"):
        database.execute(f"DELETE FROM {table}")  # drop init.sql's sample tasks
    pending, running, done, failed, cancelled = Status
    add_tasks(database, "email_tasks", [pending, pending, running, done, done, done, failed, cancelled])
    add_tasks(database, "data_sync_tasks", [done, failed, failed])
    database.execute("CREATE TABLE extra_tasks LIKE email_tasks")
    add_tasks(database, "extra_tasks", [cancelled, 9])  # 9: not a status, counted in total only
    database.executemany(
        "INSERT INTO queue_configs (queue_name, table_name) VALUES (%s, %s)",
        [
            ("extra_queue", f"{database.name}.extra_tasks"),
            ("ghost_queue", "ghost_tasks"),  # its table was dropped
            ("broken_queue", "bad-name"),  # written by hand: not a valid table name
        ],
    )
    # When
    result = run(config, "report", {"title": "weekly", "output_dir": "out/reports"}, task_id=42)
    # Then
    path = Path(result["path"])
    assert path.parent == tmp_path / "out" / "reports"  # relative to the config's folder
    assert re.fullmatch(r"report-weekly-\d{8}-\d{6}-42\.csv", path.name)
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    assert read_report(path) == [
        report_row("data_sync_queue", "data_sync_tasks", 0, 0, 1, 2, 0, 3),
        report_row("email_queue", "email_tasks", 2, 1, 3, 1, 1, 8),
        report_row("extra_queue", f"{database.name}.extra_tasks", 0, 0, 0, 0, 1, 2),
        report_row("report_queue", "report_tasks", 0, 0, 0, 0, 0, 0),
    ]
    assert result["skipped"] == ["broken_queue", "ghost_queue"]
    warnings = [line for line in job_log if line.startswith("WARNING")]
    assert any("ghost_tasks does not exist" in line for line in warnings)
    assert any("broken_queue: invalid table name 'bad-name'" in line for line in warnings)
    assert any(str(path) in line for line in job_log)


def report_row(queue: str, table: str, *counts: int) -> dict[str, str]:
    # The report's columns, spelled out: they are its contract, which a
    # renamed Status member must not change unnoticed.
    names = ("pending", "running", "done", "failed", "cancelled", "total")
    return {
        "queue_name": queue,
        "table_name": table,
        **{name: str(count) for name, count in zip(names, counts, strict=True)},
    }


def test_the_sample_report_task_writes_under_base_dir_reports(run, config, database, tmp_path):
    params = json.loads(database.execute("SELECT task_params FROM report_tasks")[0]["task_params"])

    path = Path(run(config, "report", params, task_id=7)["path"])

    assert path.parent == tmp_path / "reports"
    assert path.name.startswith("report-daily-") and path.name.endswith("-7.csv")
    rows = {row["queue_name"]: row for row in read_report(path)}
    assert rows["email_queue"]["pending"] == "2" and rows["report_queue"]["total"] == "1"


def test_report_without_params_is_titled_tasks(run, config, database, tmp_path):
    path = Path(run(config, "report", None, task_id=8)["path"])
    assert path.name.startswith("report-tasks-") and path.parent == tmp_path / "reports"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"title": "../etc"}, "title"),
        ({"title": "two words"}, "title"),
        ({"title": "x" * 51}, "title"),
        ({"title": ""}, "title"),
        ({"title": 5}, "title"),
        ({"title": "naïve"}, "title"),
        ({"output_dir": ""}, "output_dir"),
        ({"output_dir": ["reports"]}, "output_dir"),
        ({"titel": "daily"}, "titel"),
        (["daily"], "params"),
    ],
)
def test_bad_report_params_fail_permanently_naming_the_field(run, offline_config, tmp_path, params, field):
    with pytest.raises(PermanentFailure, match=rf"^{field}: "):
        run(offline_config, "report", params)
    assert not (tmp_path / "reports").exists()

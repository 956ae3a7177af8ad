"""Every example of the original system's document
(shared/seed/000_4e972ba9240c53fe.txt), transcribed as it is written there and
run against real executors, asserting what the document says happens.

Where geventq differs on purpose, the test does what README's "Differences
from the original" says instead, and says so at that step.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from geventq import Status
from tests.smtpinbox import running_inbox
from tests.support import REPO, ExecutorProcess, TestDatabase, free_port, http, wait_for

PENDING, RUNNING, DONE, FAILED, CANCELLED = Status
# The seed's config.json, with its placeholder password filled in for this
# machine's MariaDB and a test database name; plus an smtp section, which the
# seed leaves to its e-mail handler (see README, Differences from the original).
SEED_CONFIG = {
    "database": {
        "host": "localhost",
        "port": 3306,
        "username": "root",
        "password": "",
        "database": "xxljob_executor",
        "charset": "utf8mb4",
    },
    "executor": {"server_id": "server-001"},
    "queue": {"enable": True, "config_sync_interval": 10},
}

# 管理接口 — the bodies exactly as the document gives them.
CREATE_QUEUE = """{
    "queue_name": "new_queue",
    "table_name": "new_tasks",
    "server_id": "server-001",
    "max_workers": 5,
    "scan_interval": 3,
    "status": 1
  }"""
UPDATE_QUEUE = """{
    "max_workers": 10,
    "server_id": "server-002"
  }"""
EMAIL_TASK = """{
    "task_type": "email",
    "task_params": {
      "to": ["user@example.com"],
      "subject": "测试邮件",
      "content": "这是一封测试邮件",
      "type": "html"
    },
    "schedule_time": "2024-01-01 10:00:00",
    "max_retries": 3
  }"""
DATA_SYNC_TASK = """{
    "task_type": "data_sync",
    "task_params": {
      "source_db": "db1",
      "target_db": "db2",
      "table_name": "users",
      "sync_type": "incremental",
      "batch_size": 1000
    },
    "schedule_time": "2024-01-01 02:00:00",
    "max_retries": 2
  }"""

# 使用场景示例
SCENARIO_1 = """
-- 服务器1: 专门处理邮件任务
INSERT INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval)
VALUES ('email_queue', 'email_tasks', 'server-001', 10, 2);

-- 服务器2: 专门处理数据同步任务
INSERT INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval)
VALUES ('sync_queue', 'data_sync_tasks', 'server-002', 5, 5);

-- 服务器3: 处理报表生成任务
INSERT INTO queue_configs (queue_name, table_name, server_id, max_workers, scan_interval)
VALUES ('report_queue', 'report_tasks', 'server-003', 3, 10);
"""
SCENARIO_2_MOVE = "UPDATE queue_configs SET server_id = 'server-002' WHERE queue_name = 'email_queue';"
SCENARIO_2_OPEN = "UPDATE queue_configs SET server_id = '' WHERE queue_name = 'email_queue';"
SCENARIO_3 = """
-- 高并发邮件发送
UPDATE queue_configs SET max_workers = 20 WHERE queue_name = 'email_queue';

-- 低并发数据同步（避免数据库压力）
UPDATE queue_configs SET max_workers = 2 WHERE queue_name = 'sync_queue';
"""

# 任务表结构
SEED_TASK_TABLE = """
CREATE TABLE `your_task_table` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `task_type` varchar(50) NOT NULL COMMENT '任务类型',
  `task_params` text COMMENT '任务参数(JSON格式)',
  `status` tinyint(1) DEFAULT 0 COMMENT '0:待执行 1:执行中 2:已完成 3:失败 4:取消',
  `schedule_time` datetime NOT NULL COMMENT '计划执行时间',
  `start_time` datetime DEFAULT NULL,
  `end_time` datetime DEFAULT NULL,
  `retry_count` int(11) DEFAULT 0,
  `max_retries` int(11) DEFAULT 3,
  `error_msg` text,
  `server_id` varchar(50) DEFAULT '',
  `created_at` datetime DEFAULT CURRENT_TIMESTAMP,
  `updated_at` datetime DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY (`id`),
  KEY `idx_status_schedule` (`status`, `schedule_time`)
);
"""

# 自定义任务处理器: the seed's Go handler, an object with Execute(ctx) that
# parses ctx.JobParam as JSON, in Python; registered as in main.go.
CUSTOM_HANDLER = """
import json
from pathlib import Path

import geventq


class CustomTaskHandler:
    def execute(self, ctx):
        # 解析任务参数
        params = json.loads(ctx.job_param)
        # 执行具体业务逻辑
        Path(params["write_to"]).write_text(json.dumps({"task_id": ctx.task_id, "params": params}))


geventq.register_task_handler("your_task_type", CustomTaskHandler())
"""


def sql_statements(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


class SeedSite:
    """A folder laid out as the seed's user has it: config.json, handlers/, logs/."""

    def __init__(self, folder: Path, database: str, smtp_port: int):
        self.folder = folder
        self.database = database
        handlers = folder / "handlers"
        handlers.mkdir(parents=True)
        for module in (REPO / "handlers").glob("*.py"):
            shutil.copy(module, handlers / module.name)
        (handlers / "custom.py").write_text(CUSTOM_HANDLER)
        config = json.loads(json.dumps(SEED_CONFIG))
        config["database"]["database"] = database
        config["smtp"] = {"host": "127.0.0.1", "port": smtp_port}
        self.config_path = folder / "config.json"
        self.config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))


@pytest.fixture
def inbox():
    with running_inbox() as (inbox, port):
        yield inbox, port


@pytest.fixture
def seed(mariadb, tmp_path, inbox):
    """The seed's 快速开始: init.sql into the database, the config, and a way to start servers."""
    db = TestDatabase()
    # Difference: init.sql names no database, so `mysql -u root -p < init.sql`
    # becomes `mysql -u root -p DATABASE < init.sql` on a database made first.
    subprocess.run(["mysql", "-h127.0.0.1", "-uroot", "-e", f"CREATE DATABASE `{db.name}`"], check=True)
    with open(REPO / "init.sql", "rb") as script:
        subprocess.run(["mysql", "-h127.0.0.1", "-uroot", db.name], stdin=script, check=True)
    site = SeedSite(tmp_path / "site", db.name, inbox[1])
    started: list[ExecutorProcess] = []

    def start(server_id: str) -> ExecutorProcess:
        process = ExecutorProcess(
            site.config_path, db, server_id, extra_args=["--admin-port", str(free_port())]
        )
        started.append(process)
        return process.start()

    yield db, site, start
    for process in started:
        process.stop()
    db.drop()


def send(server: ExecutorProcess, method: str, path: str, body: str | None = None):
    """A curl of the seed: `-H "Content-Type: application/json" -d '…'`."""
    return http(
        method,
        server.admin_url + path,
        body.encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )


def queues_running(db: TestDatabase, server_id: str) -> list[str]:
    row = db.query("SELECT queues FROM servers WHERE server_id = %s", (server_id,))
    return sorted(json.loads(row[0]["queues"] or "[]")) if row else []


def wait_running(db: TestDatabase, expected: dict[str, list[str]], timeout: float = 60) -> None:
    wait_for(
        lambda: all(queues_running(db, server) == sorted(queues) for server, queues in expected.items()),
        timeout=timeout,
        interval=0.2,
        message=f"queues running as {expected}",
    )


def test_the_admin_examples_of_the_seed(seed, inbox):
    db, _, start = seed
    server_1 = start("server-001")
    # 创建队列配置
    status, answer = send(server_1, "POST", "/admin/queue/create", CREATE_QUEUE)
    assert status == 201 and answer["code"] == 0
    created = answer["data"]
    assert {key: created[key] for key in json.loads(CREATE_QUEUE)} == json.loads(CREATE_QUEUE)
    assert db.scalar("SELECT COUNT(*) FROM new_tasks") == 0  # its task table was created
    # 获取队列列表
    status, answer = send(server_1, "GET", "/admin/queue/list")
    assert status == 200
    names = [queue["queue_name"] for queue in answer["data"]]
    assert names == ["email_queue", "data_sync_queue", "report_queue", "new_queue"]
    assert all(
        set(queue["counts"]) == {"pending", "running", "done", "failed", "cancelled"}
        for queue in answer["data"]
    )
    # 更新队列配置: queue 1 (email_queue) moves to server-002, at runtime
    start("server-002")
    status, answer = send(server_1, "PUT", "/admin/queue/update?id=1", UPDATE_QUEUE)
    assert status == 200
    assert (answer["data"]["max_workers"], answer["data"]["server_id"]) == (10, "server-002")
    wait_running(
        db,
        {
            "server-001": ["data_sync_queue", "report_queue", "new_queue"],
            "server-002": ["email_queue", "data_sync_queue", "report_queue"],
        },
    )
    # 创建邮件任务: it arrives at the SMTP server with that subject and content
    mail, _ = inbox
    status, answer = send(server_1, "POST", "/admin/task/create?table=email_tasks", EMAIL_TASK)
    assert status == 201
    email_id = answer["data"]["id"]
    wait_for(lambda: db.task("email_tasks", email_id)["status"] == DONE, timeout=30, message="e-mail sent")
    assert db.task("email_tasks", email_id)["server_id"] == "server-002"
    [delivery] = [d for d in mail.deliveries if d.rcpt_tos == ["user@example.com"]]
    assert delivery.message["Subject"] == "测试邮件"
    assert delivery.message.get_body(("html",)).get_content().strip() == "这是一封测试邮件"
    # 创建数据同步任务: `users` from db1 to db2, incrementally
    with db1_and_db2(db) as (source, target):
        status, answer = send(server_1, "POST", "/admin/task/create?table=data_sync_tasks", DATA_SYNC_TASK)
        assert status == 201
        sync_id = answer["data"]["id"]
        wait_for(
            lambda: db.task("data_sync_tasks", sync_id)["status"] == DONE, timeout=30, message="data synced"
        )
        assert target() == source()
    # 删除队列配置
    status, answer = send(server_1, "DELETE", "/admin/queue/delete?id=1")
    assert status == 200 and answer["data"]["queue_name"] == "email_queue"
    assert not db.query("SELECT id FROM queue_configs WHERE id = 1")
    wait_running(db, {"server-002": ["data_sync_queue", "report_queue"]})
    # 查看服务器状态
    status, answer = send(server_1, "GET", "/admin/server/list")
    assert status == 200
    assert {(row["server_id"], row["alive"]) for row in answer["data"]} == {
        ("server-001", True),
        ("server-002", True),
    }


@contextmanager
def db1_and_db2(db: TestDatabase):
    """The seed's db1 and db2 with a `users` table, db2 holding the first rows
    already; yields a reader of each table's rows."""
    for name in ("db1", "db2"):
        db.execute(f"DROP DATABASE IF EXISTS {name}")
        db.execute(f"CREATE DATABASE {name}")
        db.execute(f"CREATE TABLE {name}.users (id INT PRIMARY KEY, name VARCHAR(50))")
    users = [(n, f"user {n}") for n in range(1, 2501)]
    try:
        for name, rows in (("db1", users), ("db2", users[:700])):
            with db.connect() as conn, conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {name}.users VALUES (%s, %s)", rows)
        yield (
            lambda: db.query("SELECT * FROM db1.users ORDER BY id"),
            lambda: db.query("SELECT * FROM db2.users ORDER BY id"),
        )
    finally:
        for name in ("db1", "db2"):
            db.execute(f"DROP DATABASE IF EXISTS {name}")


def test_the_sql_scenarios_of_the_seed(seed):
    db, _, start = seed
    # 场景1：多服务器队列隔离. Difference: init.sql registers the sample tables
    # as open queues already, so the scenario starts from an empty queue table.
    db.execute("DELETE FROM queue_configs")
    for statement in sql_statements(SCENARIO_1):
        db.execute(statement)
    servers = {server_id: start(server_id) for server_id in ("server-001", "server-002", "server-003")}
    wait_running(
        db, {"server-001": ["email_queue"], "server-002": ["sync_queue"], "server-003": ["report_queue"]}
    )
    # 场景2：动态调整负载 — move the e-mail queue, then open it to any server
    db.execute(SCENARIO_2_MOVE)
    wait_running(db, {"server-001": [], "server-002": ["email_queue", "sync_queue"]})
    db.execute(SCENARIO_2_OPEN)
    wait_running(
        db,
        {
            "server-001": ["email_queue"],
            "server-002": ["email_queue", "sync_queue"],
            "server-003": ["email_queue", "report_queue"],
        },
    )
    # 场景3：控制并发数 — the pools resize at runtime
    for statement in sql_statements(SCENARIO_3):
        db.execute(statement)
    wait_for(
        lambda: pool_sizes(servers["server-002"]) == {"email_queue": 20.0, "sync_queue": 2.0},
        timeout=60,
        interval=0.5,
        message="pools resized",
    )


def pool_sizes(server: ExecutorProcess) -> dict[str, float]:
    """geventq_pool_size by queue, from the server's /metrics."""
    with urllib.request.urlopen(server.admin_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    sizes = {}
    for line in text.splitlines():
        if line.startswith("geventq_pool_size{"):
            labels, value = line.rsplit(" ", 1)
            queue = labels.split('queue="', 1)[1].split('"', 1)[0]
            sizes[queue] = float(value)
    return sizes


def test_the_task_table_and_handler_interface_of_the_seed(seed, tmp_path):
    db, site, start = seed
    # 任务表结构: a table made with exactly the seed's DDL is a queue's table
    for statement in sql_statements(SEED_TASK_TABLE):
        db.execute(statement)
    server = start("server-001")
    status, _ = send(
        server,
        "POST",
        "/admin/queue/create",
        json.dumps({"queue_name": "your_queue", "table_name": "your_task_table", "scan_interval": 1}),
    )
    assert status == 201
    # 自定义任务处理器: an object whose execute(ctx) parses ctx.job_param as JSON
    out = tmp_path / f"custom-{uuid.uuid4().hex[:6]}.json"
    status, answer = send(
        server,
        "POST",
        "/admin/task/create?table=your_task_table",
        json.dumps({"task_type": "your_task_type", "task_params": {"write_to": str(out), "n": 7}}),
    )
    assert status == 201
    task_id = answer["data"]["id"]
    wait_for(lambda: db.task("your_task_table", task_id)["status"] == DONE, timeout=60, message="done")
    assert json.loads(out.read_text()) == {"task_id": task_id, "params": {"write_to": str(out), "n": 7}}
    # 监控和日志: ./logs/executor-YYYY-MM-DD.log and ./logs/job-{logID}-YYYY-MM-DD.log
    logs = site.folder / "logs"
    assert list(logs.glob("executor-????-??-??.log"))
    assert list(logs.glob(f"job-your_task_table-{task_id}-????-??-??.log"))


def test_the_troubleshooting_list_of_the_seed(seed):
    db, site, start = seed
    db.execute("UPDATE queue_configs SET scan_interval = 1")
    server = start("server-001")
    # 队列不工作 — status 0 or another server_id: the queue does not run here
    db.execute("UPDATE queue_configs SET status = 0 WHERE queue_name = 'report_queue'")
    db.execute("UPDATE queue_configs SET server_id = 'server-009' WHERE queue_name = 'data_sync_queue'")
    wait_running(db, {"server-001": ["email_queue"]})
    queues = {q["queue_name"]: q for q in send(server, "GET", "/admin/queue/list")[1]["data"]}
    assert (queues["report_queue"]["status"], queues["data_sync_queue"]["server_id"]) == (0, "server-009")
    # 任务不执行 — a schedule_time in the future waits; the same task due now runs
    later = db.insert_tasks(
        "email_tasks",
        "email",
        params={"to": "a@example.com", "subject": "s", "content": "c", "dry_run": True},
        delay_seconds=3600,
    )[0]
    now = db.insert_tasks(
        "email_tasks",
        "email",
        params={"to": "a@example.com", "subject": "s", "content": "c", "dry_run": True},
    )[0]
    wait_for(lambda: db.task("email_tasks", now)["status"] == DONE, timeout=30, message="due task ran")
    assert db.task("email_tasks", later)["status"] == PENDING
    # 任务处理器未找到 — a task_type nobody registered stays pending (while a
    # task queued after it runs); the start-up line lists the registered types
    orphan = db.insert_tasks("email_tasks", "no_such_type")[0]
    after = db.insert_tasks(
        "email_tasks",
        "email",
        params={"to": "a@example.com", "subject": "s", "content": "c", "dry_run": True},
    )[0]
    wait_for(lambda: db.task("email_tasks", after)["status"] == DONE, timeout=30, message="later task ran")
    assert "handlers: data_sync, email, report, your_task_type" in server.output
    assert db.task("email_tasks", orphan)["status"] == PENDING
    # 数据库连接失败 — a wrong port stops start-up, naming host:port
    config = json.loads(site.config_path.read_text())
    config["database"]["port"] = free_port()
    broken = site.folder / "broken.json"
    broken.write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "geventq", "--config", str(broken), "--admin-port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert f"cannot reach MySQL at localhost:{config['database']['port']}" in result.stdout + result.stderr

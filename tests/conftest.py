"""Fixtures shared by the whole suite: MariaDB must be up (tests fail in CI
and skip locally without it), each test gets its own database, and every
executor process a test starts is stopped when it ends."""

from __future__ import annotations

import os

import pymysql
import pytest

from tests.faultproxy import FaultProxy
from tests.invariants import prepare
from tests.support import DB_HOST, DB_PORT, DB_USER, ExecutorProcess, TestDatabase, write_config


@pytest.fixture(scope="session")
def mariadb() -> None:
    try:
        pymysql.connect(host=DB_HOST, port=DB_PORT, user=DB_USER, password="", connect_timeout=3).close()
    except pymysql.err.OperationalError as error:
        if os.environ.get("CI"):
            pytest.fail(f"MariaDB is not reachable at {DB_HOST}:{DB_PORT}: {error}")
        pytest.skip(f"MariaDB is not reachable at {DB_HOST}:{DB_PORT}")


@pytest.fixture
def db(mariadb) -> TestDatabase:
    database = TestDatabase().create()
    yield database
    database.drop()


@pytest.fixture
def executors(db, tmp_path):
    """Start executors with `executors.start(server_id, **config_sections)`."""
    started: list[ExecutorProcess] = []

    class Launcher:
        def config(self, **sections):
            return write_config(tmp_path, db, **sections)

        def start(
            self,
            server_id: str = "server-001",
            wait: bool = True,
            config_path=None,
            extra_args=None,
            env=None,
            **sections,
        ) -> ExecutorProcess:
            path = config_path or self.config(**sections)
            process = ExecutorProcess(path, db, server_id, extra_args=extra_args, env=env)
            started.append(process)
            return process.start(wait=wait)

    yield Launcher()
    for process in started:
        process.stop()


@pytest.fixture
def chaos_db(db) -> TestDatabase:
    """A test database ready for the `chaos` handler and the invariant checker."""
    with db.connect() as conn, conn.cursor() as cur:
        prepare(cur)
    return db


@pytest.fixture
def proxy():
    """A fault proxy in front of the machine's MariaDB."""
    with FaultProxy().start() as started:
        yield started

"""`database.hosts` on the machine's one MariaDB: a dead first node is
passed over, a connection that breaks moves the pool to the next node, and
the node in use shows in /healthz and the server list. The failover of a
real cluster is tests/test_galera.py."""

from __future__ import annotations

import pytest

from geventq import config, store
from geventq.db import Database
from geventq.errors import ConfigError, DatabaseUnavailable
from tests.support import DB_PORT, http

LIVE = f"127.0.0.1:{DB_PORT}"
# The same server under another name: a second "node" whose connections we can break.
OTHER_NAME = f"localhost:{DB_PORT}"
DEAD = "127.0.0.1:1"  # nothing listens on port 1


def database(db, hosts: list[str]) -> Database:
    cfg = config.load(overrides={"database.hosts": hosts, "database.database": db.name}, search=False)
    return Database(cfg.database, size=2)


def test_hosts_must_be_host_and_port():
    with pytest.raises(ConfigError, match=r'database\.hosts: must be a list of "host:port"'):
        config.load(overrides={"database.hosts": ["127.0.0.1"]}, search=False)
    cfg = config.load(overrides={"database.hosts": ["db1:3311", "[::1]:3312"]}, search=False)
    assert cfg.database.nodes() == (("db1", 3311), ("::1", 3312))


def test_without_hosts_host_and_port_are_the_one_node():
    cfg = config.load(overrides={"database.host": "db9", "database.port": 3399}, search=False)
    assert cfg.database.nodes() == (("db9", 3399),)


def test_a_dead_first_node_is_passed_over(db):
    pool = database(db, [DEAD, LIVE])
    try:
        assert pool.call(store.database_now) is not None
        assert pool.address == LIVE
    finally:
        pool.close()


def test_a_broken_connection_moves_the_pool_to_the_next_node(db):
    # Given a pool on the first node
    pool = database(db, [LIVE, OTHER_NAME])
    try:
        with pool.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID() AS id")
            first = cur.fetchone()["id"]
        assert pool.address == LIVE
        # When its connection is killed under it (as a node's death would)
        db.execute(f"KILL {int(first)}")
        with pytest.raises(DatabaseUnavailable), pool.cursor() as cur:
            cur.execute("SELECT 1")
        # Then the next connection goes to the next node, and works
        with pool.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID() AS id")
            assert cur.fetchone()["id"] != first
        assert pool.address == OTHER_NAME
    finally:
        pool.close()


def test_the_server_says_which_node_it_uses(executors, db):
    server = executors.start("server-nodes", database={"hosts": [DEAD, LIVE]})
    status, health = http("GET", f"{server.admin_url}/healthz")
    assert status == 200
    assert health["data"]["db_node"] == LIVE
    status, listed = http("GET", f"{server.admin_url}/admin/server/list")
    assert [row["db_node"] for row in listed["data"] if row["server_id"] == "server-nodes"] == [LIVE]
    assert db.scalar("SELECT db_node FROM servers WHERE server_id = 'server-nodes'") == LIVE

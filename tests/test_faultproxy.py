"""FaultProxy against the real MariaDB: every mode, the control API, and the
proxy process's own life cycle."""

import signal
import subprocess
import sys
import threading
import time

import pymysql
import pytest

from tests.faultproxy import REPO_ROOT, FaultProxy

MARIADB = ("127.0.0.1", 3306)
# Every test needs MariaDB: the shared fixture skips locally, fails in CI.
pytestmark = pytest.mark.usefixtures("mariadb")


@pytest.fixture
def proxy():
    with FaultProxy(upstream=MARIADB).start() as proxy:
        yield proxy


def connect(proxy: FaultProxy, **options) -> pymysql.connections.Connection:
    # Short timeouts everywhere: a test that hangs is worse than one that fails.
    settings = {"connect_timeout": 2, "read_timeout": 5, "write_timeout": 5} | options
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", **settings)


def select_one(conn: pymysql.connections.Connection) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    # An orphan is reaped by whoever adopted it, maybe late: a zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_pass_mode_forwards_queries(proxy):
    # Given a connection through the proxy
    with connect(proxy) as conn:
        # Then queries go through, and the proxy counts the connection
        assert select_one(conn) == 1
        stats = proxy.stats()
        assert stats["mode"] == "pass"
        assert stats["accepted"] == 1
        assert stats["active"] == 1


def test_refuse_fails_new_connections_and_keeps_live_ones(proxy):
    # Given a live connection
    with connect(proxy) as live:
        # When the proxy refuses
        proxy.set_mode("refuse")

        # Then a new connection fails at once, not after a timeout
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError):
            connect(proxy)
        assert time.monotonic() - started < 1.0
        # And the live one still works
        assert select_one(live) == 1
        assert proxy.stats()["refused"] == 1

        # And pass lets new connections in again
        proxy.set_mode("pass")
        with connect(proxy) as fresh:
            assert select_one(fresh) == 1


def test_drop_cuts_live_connections_once(proxy):
    # Given a live connection
    with connect(proxy) as live:
        assert select_one(live) == 1

        # When the proxy drops
        proxy.set_mode("drop")

        # Then its next query fails
        with pytest.raises(pymysql.err.OperationalError):
            select_one(live)
    # And drop was a one-shot: the proxy is back to pass and new connections work
    stats = proxy.stats()
    assert (stats["mode"], stats["dropped"]) == ("pass", 1)
    with connect(proxy) as fresh:
        assert select_one(fresh) == 1


def test_blackhole_silences_live_connections(proxy):
    # Given a live connection that gives up after 1 s of silence
    with connect(proxy, read_timeout=1) as live:
        assert select_one(live) == 1

        # When the network partitions
        proxy.set_mode("blackhole")

        # Then its next query times out: silence, not an error from the peer
        started = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError):
            select_one(live)
        elapsed = time.monotonic() - started
        assert 0.8 < elapsed < 3.0

    # And once healed, a new connection works
    proxy.set_mode("pass")
    with connect(proxy) as fresh:
        assert select_one(fresh) == 1


def test_blackhole_holds_new_connections_until_healed(proxy):
    # Given a partition
    proxy.set_mode("blackhole")

    # Then a new connection is accepted but hears nothing, so it times out
    started = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError):
        connect(proxy, read_timeout=0.5)
    assert time.monotonic() - started >= 0.4

    # And one still waiting when the partition heals goes through
    result = {}
    waiter = threading.Thread(target=lambda: result.update(conn=connect(proxy)))
    waiter.start()
    wait_until(lambda: proxy.stats()["accepted"] == 2, 3, "the held connection")
    proxy.set_mode("pass")
    waiter.join(5)
    assert "conn" in result, "the held connection did not complete after healing"
    with result["conn"] as conn:
        assert select_one(conn) == 1


def test_unknown_mode_is_rejected(proxy):
    with pytest.raises(ValueError, match="unknown mode"):
        proxy.set_mode("chaos")
    assert proxy.stats()["mode"] == "pass"


def test_stop_ends_the_process_and_is_idempotent():
    proxy = FaultProxy(upstream=MARIADB).start()
    pid = proxy.pid

    proxy.stop()
    proxy.stop()

    assert process_gone(pid)
    assert proxy.port is None


# Starts a proxy, prints its pid, then sits until killed.
PARENT_SCRIPT = """
import time
from tests.faultproxy import FaultProxy
proxy = FaultProxy(upstream=("127.0.0.1", 3306)).start()
print(proxy.pid, flush=True)
time.sleep(30)
"""


def test_proxy_exits_when_its_parent_dies():
    # Given a proxy whose parent process is not us
    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    try:
        pid = int(parent.stdout.readline())
    finally:
        # When that parent is killed without a chance to clean up
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()

    # Then the orphaned proxy notices within its 1 s poll and exits
    wait_until(lambda: process_gone(pid), 3, f"orphaned proxy {pid} to exit")

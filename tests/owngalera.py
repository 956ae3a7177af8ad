"""A private 3-node MariaDB Galera cluster on 127.0.0.1 for tests and the
benchmark: each node an OwnMariaDB with its own datadir, client port,
group-communication (gcomm), IST and rsync SST ports; node 1 bootstraps the
cluster (--wsrep-new-cluster), the others join it and receive a copy (SST).

    with GaleraCluster() as cluster:      # three nodes, Synced
        cluster.nodes[1].kill()           # kill -9 one node: two keep quorum

The nodes run as the `mysql` user on datadirs it owns: started as root, the
rsync SST daemon drops to `nobody` and cannot write the joiner's datadir.
Root has an empty password over TCP on every node, like the machine's own
MariaDB. Without galera-4 installed the cluster does not start: a test that
needs it fails, it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Self

import pymysql

from tests.ownmariadb import OwnMariaDB

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
CLIENT_PORTS = (3311, 3312, 3313)
GCOMM_PORTS = (4571, 4572, 4573)
IST_PORTS = (4581, 4582, 4583)
SST_PORTS = (4591, 4592, 4593)
SYNC_DEADLINE = 120.0
# Group communication that notices a killed node within a few seconds
# (defaults: suspect after 5 s, evict after 15 s) so a test does not wait.
EVS_OPTIONS = (
    "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;"
    "evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S"
)


class GaleraNode(OwnMariaDB):
    def __init__(self, root: Path, number: int, bootstrap: bool):
        self.number = number
        self.bootstrap = bootstrap
        super().__init__(root / f"node{number}", port=CLIENT_PORTS[number - 1], user=_galera_user())

    def server_args(self) -> list[str]:
        index = self.number - 1
        members = ",".join(f"127.0.0.1:{port}" for port in GCOMM_PORTS)
        provider_options = (
            f"gmcast.listen_addr=tcp://127.0.0.1:{GCOMM_PORTS[index]};"
            f"ist.recv_addr=127.0.0.1:{IST_PORTS[index]};gcache.size=64M;{EVS_OPTIONS}"
        )
        # A commit is durable on the other nodes once it returns: no fsync per
        # commit on each of three nodes sharing one disk (a common Galera setting).
        durable = ("--skip-log-bin", "--innodb-flush-log-at-trx-commit=1")
        args = [
            *[arg for arg in super().server_args() if arg not in durable],
            "--innodb-flush-log-at-trx-commit=2",
            "--wsrep-on=ON",
            f"--wsrep-provider={PROVIDER}",
            f"--wsrep-cluster-address=gcomm://{members}",
            "--wsrep-cluster-name=geventq_test",
            f"--wsrep-node-name=node{self.number}",
            "--wsrep-node-address=127.0.0.1",
            f"--wsrep-provider-options={provider_options}",
            "--wsrep-sst-method=rsync",
            f"--wsrep-sst-receive-address=127.0.0.1:{SST_PORTS[index]}",
            # What Galera needs of every node (README, "Running on a Galera cluster").
            "--binlog-format=ROW",
            "--innodb-autoinc-lock-mode=2",
            "--default-storage-engine=InnoDB",
            "--innodb-buffer-pool-size=64M",
        ]
        # Only the first start of node 1 forms a new cluster; a restart joins.
        if self.bootstrap and self.starts == 1:
            args.append("--wsrep-new-cluster")
        return args

    def status(self, name: str) -> str | None:
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", connect_timeout=2)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                row = cur.fetchone()
                return row[1] if row else None
        finally:
            conn.close()

    def synced(self, size: int) -> bool:
        try:
            return self.status("wsrep_local_state_comment") == "Synced" and self.status(
                "wsrep_cluster_size"
            ) == str(size)
        except pymysql.err.Error:
            return False


class GaleraCluster:
    def __init__(self, size: int = 3):
        # Not under pytest's tmp_path: its folders are private to root, and
        # the nodes run as mysql.
        self.root = Path(tempfile.mkdtemp(prefix="geventq-galera-"))
        self.root.chmod(0o755)
        self.nodes = [GaleraNode(self.root, number, bootstrap=number == 1) for number in range(1, size + 1)]

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *_) -> None:
        self.remove()

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self) -> Self:
        if not os.path.exists(PROVIDER):
            raise RuntimeError(f"{PROVIDER} is missing: install galera-4 to run Galera tests")
        for node in self.nodes:
            node.install()
        # One joiner at a time: each receives its copy from a Synced node.
        for node in self.nodes:
            node.start()
            self.wait_synced(node, size=node.number)
        return self

    def wait_synced(self, node: GaleraNode, size: int) -> None:
        deadline = time.monotonic() + SYNC_DEADLINE
        while not node.synced(size):
            if not node.alive():
                raise RuntimeError(f"galera node {node.number} exited:\n{node.error_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"galera node {node.number} not Synced in a cluster of {size}:\n{node.error_log()}"
                )
            time.sleep(0.2)

    def remove(self) -> None:
        # Joiners first, so the last node standing is the one that needs no quorum.
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _galera_user() -> str:
    return "mysql" if os.geteuid() == 0 else os.environ.get("USER", "mysql")

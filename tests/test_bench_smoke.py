"""The benchmark command runs end to end: `python -m tests.bench --quick
--only W1` against real executor processes. This asserts correctness (every
task ran, the figures are there), never speed."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.support import REPO, TestDatabase


def test_quick_w1_writes_a_positive_throughput(mariadb, tmp_path):
    # Given a database name of our own (the bench drops and recreates it)
    database = TestDatabase(f"geventq_test_bench_{uuid.uuid4().hex[:8]}")
    try:
        # When the quick benchmark runs W1 only
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench",
                "--quick",
                "--only",
                "W1",
                "--out",
                str(tmp_path),
                "--database",
                database.name,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        database.drop()

    # Then it exits 0, prints the table and writes a JSON with a positive W1 figure
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| W1 no-op" in completed.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    w1 = results["W1"]
    assert w1["tasks"] == w1["done"] == 2000, w1
    assert w1["tasks_per_s"] > 0
    assert w1["job_logs"] > 0
    assert w1["exit_codes"] == {"bench-w1-1": 0}
    assert w1["sql"]["statements_per_task"] > 0

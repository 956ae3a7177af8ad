"""The Galera claim's SQL (store.claim_due_tasks_in_share) on the real
MariaDB: shares are disjoint and in claim order, a short share is topped up
from the others, and the plan still walks the claim index. The cluster
itself is exercised by tests/test_galera.py."""

from __future__ import annotations

import zlib

from geventq import store
from geventq.db import quote_table
from tests.support import RecordingCursor

TABLE = "email_tasks"


def claim(db, share: tuple[int, int], limit: int, server_id: str = "s1") -> list[dict]:
    with db.connect() as conn:
        conn.begin()
        with conn.cursor() as cur:
            rows = store.claim_due_tasks_in_share(
                cur, quote_table(TABLE, None), server_id, ("record",), limit, "email", share
            )
        conn.commit()
    return rows


def part_of(task_id: int, parts: int) -> int:
    return zlib.crc32(str(task_id).encode()) % parts


def test_each_share_claims_its_own_rows_in_claim_order(db):
    ids = db.insert_tasks(TABLE, "record", 90)
    claims = {part: claim(db, (part, 3), 10, f"s{part}") for part in range(3)}
    for part, rows in claims.items():
        taken = [row["id"] for row in rows]
        assert len(taken) == 10
        assert all(part_of(task_id, 3) == part for task_id in taken)
        # The first ten of this share among the due rows, in claim order.
        assert taken == [task_id for task_id in ids if part_of(task_id, 3) == part][:10]
    every = [row["id"] for rows in claims.values() for row in rows]
    assert len(set(every)) == 30
    running = db.query(f"SELECT id, server_id, start_time FROM `{TABLE}` WHERE status = 1")
    assert {row["id"] for row in running} == set(every)
    owner = {row["id"]: part for part, rows in claims.items() for row in rows}
    assert all(row["server_id"] == f"s{owner[row['id']]}" for row in running)


def test_a_short_share_is_topped_up_from_the_other_shares(db):
    # Nobody may claim share 1 right now: its rows still start.
    ids = db.insert_tasks(TABLE, "record", 12)
    rows = claim(db, (0, 3), 50)
    assert sorted(row["id"] for row in rows) == ids
    assert len({row["claimed_at"] for row in rows}) == 1
    assert db.status_counts(TABLE) == {store.RUNNING: 12}


def test_the_share_filter_keeps_the_claim_index(db):
    cursor = RecordingCursor()
    store.claim_due_tasks_in_share(cursor, quote_table(TABLE, None), "s", ("record",), 50, "email", (1, 3))
    for sql, args in cursor.statements:
        plan = db.query("EXPLAIN " + sql, args)[0]
        assert plan["key"] == "idx_status_schedule" and "filesort" not in (plan["Extra"] or "").lower()

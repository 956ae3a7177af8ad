"""Named locks between servers (store.try_named_lock), on the machine's
MariaDB: one holder at a time, released only by its holder, taken over once
its time has run out. The same across Galera nodes is tests/test_galera.py."""

from __future__ import annotations

import threading
import time

from geventq import store


def take(db, name: str, holder: str, seconds: float = 30) -> bool:
    with db.connect() as conn, conn.cursor() as cur:
        return store.try_named_lock(cur, name, holder, seconds)


def release(db, name: str, holder: str) -> bool:
    with db.connect() as conn, conn.cursor() as cur:
        return store.release_named_lock(cur, name, holder)


def test_one_holder_at_a_time(db):
    assert take(db, "job", "a")
    assert not take(db, "job", "b")
    assert take(db, "other", "b")  # another name is another lock
    assert release(db, "job", "a")
    assert take(db, "job", "b")


def test_only_the_holder_releases(db):
    assert take(db, "job", "a")
    assert not release(db, "job", "b")
    assert not take(db, "job", "b")


def test_a_lock_whose_time_ran_out_is_taken_over(db):
    assert take(db, "job", "a", seconds=0.2)
    time.sleep(0.3)
    assert take(db, "job", "b")
    # The late holder's release does not free the new holder's lock
    assert not release(db, "job", "a")
    assert not take(db, "job", "c")


def test_takers_at_the_same_moment_get_one_winner(db):
    # Given eight servers' connections, opened and waiting at a barrier
    barrier, winners = threading.Barrier(8), []

    def contend(holder: str) -> None:
        with db.connect() as conn, conn.cursor() as cur:
            barrier.wait()
            if store.try_named_lock(cur, "job", holder, 30):
                winners.append(holder)

    threads = [threading.Thread(target=contend, args=(f"h{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then exactly one took it, and the row names that one
    assert len(winners) == 1
    assert db.scalar("SELECT holder FROM named_locks WHERE name = 'job'") == winners[0]

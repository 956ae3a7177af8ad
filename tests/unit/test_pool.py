"""WorkerPool: a gevent Pool whose size changes while greenlets run in it."""

import gevent
from gevent.event import Event

from geventq.queues import WorkerPool


def _fill(pool: WorkerPool, count: int, release: Event) -> list[gevent.Greenlet]:
    return [pool.spawn(release.wait) for _ in range(count)]


def test_growing_frees_slots_at_once():
    pool, release = WorkerPool(2), Event()
    _fill(pool, 2, release)
    assert pool.free_count() == 0
    pool.resize(5)
    assert pool.free_count() == 3
    release.set()
    pool.join()


def test_shrinking_below_running_cancels_nothing_and_holds_the_new_cap():
    # Given four handlers running in a pool of four
    pool, release = WorkerPool(4), Event()
    running = _fill(pool, 4, release)
    # When the pool shrinks to one
    pool.resize(1)
    # Then all four keep running, and no slot frees until three have ended
    assert not any(greenlet.dead for greenlet in running) and pool.free_count() == 0
    release.set()
    pool.join()
    assert pool.free_count() == 1 and pool.size == 1


def test_a_shrink_owed_then_grown_back_pays_the_debt_first():
    pool, release = WorkerPool(3), Event()
    _fill(pool, 3, release)
    pool.resize(1)  # owes two slots
    pool.resize(2)  # one of the debt is forgiven
    release.set()
    pool.join()
    assert pool.free_count() == 2


def test_resize_up_and_down_while_idle_keeps_free_count_equal_to_size():
    pool = WorkerPool(5)
    for size in (1, 8, 3, 3, 10, 2):
        pool.resize(size)
        assert pool.free_count() == size

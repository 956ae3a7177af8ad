"""The lease: valid while renewed within its ttl; a lapse starts a new epoch
that stays invalid until the hub has stopped the old handlers."""

import time

from geventq.lease import Lease, LeaseWatch


class Handlers:
    def __init__(self, running: int = 0):
        self.running, self.stopped = running, 0

    def stop(self, exception) -> int:
        stopped, self.running = self.running, 0
        self.stopped += stopped
        return stopped


def test_a_new_lease_is_not_valid_until_renewed():
    lease = Lease(10)
    assert lease.expired() and not lease.valid()
    lease.renew(time.monotonic())
    assert lease.valid() and lease.epoch == 0


def test_the_ttl_counts_from_when_the_heartbeat_was_sent():
    lease = Lease(1.0)
    lease.renew(time.monotonic() - 1.5)  # sent 1.5 s ago, answered only now
    assert lease.expired()


def test_a_renewal_after_a_lapse_starts_a_new_epoch_that_waits_for_the_watch():
    lease = Lease(1.0)
    lease.renew(time.monotonic() - 2)
    epoch = lease.epoch
    lease.renew(time.monotonic())
    assert lease.epoch == epoch + 1 and lease.lapse_unsettled() and not lease.valid()
    assert not lease.valid_in(epoch)
    lease.end_lapse()
    assert lease.valid() and lease.valid_in(lease.epoch) and not lease.valid_in(epoch)


def test_renewals_within_the_ttl_keep_the_epoch():
    lease = Lease(10)
    lease.renew(time.monotonic())
    lease.renew(time.monotonic())
    assert lease.epoch == 0 and lease.valid_in(0)


def test_the_watch_stops_handlers_at_a_lapse_and_settles_the_renewal():
    lease, handlers = Lease(1.0), Handlers(running=3)
    lease.renew(time.monotonic() - 2)
    watch = LeaseWatch(lease, handlers.stop, lambda: handlers.running)
    watch.watch_once()
    assert handlers.stopped == 3
    lease.renew(time.monotonic())
    assert not lease.valid()
    watch.watch_once()
    assert lease.valid()


def test_the_watch_leaves_handlers_alone_while_the_lease_holds():
    lease, handlers = Lease(10), Handlers(running=2)
    lease.renew(time.monotonic())
    LeaseWatch(lease, handlers.stop, lambda: handlers.running).watch_once()
    assert handlers.stopped == 0

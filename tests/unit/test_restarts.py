"""The supervisor's restart policy: backoff per child and the crash-loop detector."""

from geventq.restarts import CrashLoop, RestartPolicy


def test_backoff_doubles_from_one_second_to_a_minute():
    policy = RestartPolicy()
    delays = [policy.restart_delay(1, lived=0.5) for _ in range(9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_each_child_has_its_own_backoff():
    policy = RestartPolicy()
    assert [policy.restart_delay(1, lived=0.1) for _ in range(3)] == [1, 2, 4]
    assert policy.restart_delay(2, lived=0.1) == 1


def test_a_child_that_ran_a_minute_starts_the_backoff_over():
    policy = RestartPolicy()
    for _ in range(5):
        policy.restart_delay(1, lived=1)
    assert policy.restart_delay(1, lived=60) == 1
    assert policy.restart_delay(1, lived=1) == 2


def test_six_restarts_within_a_minute_are_a_crash_loop():
    loop = CrashLoop()
    assert [loop.restart(now) for now in (0, 1, 2, 3, 4)] == [False] * 5
    assert loop.restart(59.9) is True


def test_restarts_spread_over_more_than_a_minute_are_not():
    loop = CrashLoop()
    # one restart every 12.5 s: never more than five in any 60 s window
    assert not any(loop.restart(index * 12.5) for index in range(20))


def test_the_window_slides():
    loop = CrashLoop()
    for now in (0, 10, 20, 30, 40):
        loop.restart(now)
    # the restart at 0 has left the window by 60.5: five remain with this one
    assert loop.restart(60.5) is False
    # and one more within the minute makes six
    assert loop.restart(61) is True


def test_the_message_names_the_rule():
    assert CrashLoop().describe() == "more than 5 restarts in 60s"

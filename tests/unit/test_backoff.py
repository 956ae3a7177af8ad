"""The retry delay: base * 2^retry_count, capped (README, "Life cycle")."""

from geventq.running import backoff_seconds


def test_backoff_doubles_from_the_base():
    assert [backoff_seconds(n, 5, 3600) for n in range(5)] == [5, 10, 20, 40, 80]


def test_backoff_is_capped():
    assert backoff_seconds(20, 5, 3600) == 3600


def test_a_huge_retry_count_does_not_overflow():
    assert backoff_seconds(10_000, 1, 60) == 60


def test_a_zero_base_retries_at_once():
    assert backoff_seconds(3, 0, 3600) == 0

"""Outcome grouping: successes share one fenced UPDATE per (table, retry_count)."""

from geventq.attempts import DONE, Attempt, Outcome, OutcomeKind
from geventq.db import quote_table
from geventq.outcomes import group_outcomes


def attempt(table: str, task_id: int, retry_count: int = 0) -> Attempt:
    row = {
        "id": task_id,
        "task_type": "t",
        "task_params": "{}",
        "retry_count": retry_count,
        "max_retries": 3,
        "schedule_time": None,
    }
    return Attempt.from_row("q", table, quote_table(table, None), row, 0.0)


def test_successes_group_by_table_and_retry_count_in_order():
    batch = [
        (attempt("a", 1), DONE),
        (attempt("b", 2), DONE),
        (attempt("a", 3), DONE),
        (attempt("a", 4, retry_count=1), DONE),
    ]
    groups, singles = group_outcomes(batch)
    assert singles == []
    assert {key: [a.id for a in attempts] for key, attempts in groups.items()} == {
        (quote_table("a", None), 0): [1, 3],
        (quote_table("b", None), 0): [2],
        (quote_table("a", None), 1): [4],
    }


def test_failures_go_one_by_one_with_their_own_outcome():
    retry, failed = Outcome.retry("boom", 5.0), Outcome.failed("bad", timed_out=True)
    batch = [(attempt("a", 1), retry), (attempt("a", 2), DONE), (attempt("a", 3), failed)]
    groups, singles = group_outcomes(batch)
    assert [a.id for a in groups[(quote_table("a", None), 0)]] == [2]
    assert [(a.id, o.kind) for a, o in singles] == [(1, OutcomeKind.RETRY), (3, OutcomeKind.FAILED)]
    assert singles[1][1].timed_out and singles[0][1].delay == 5.0


def test_an_empty_batch_writes_nothing():
    assert group_outcomes([]) == ({}, [])

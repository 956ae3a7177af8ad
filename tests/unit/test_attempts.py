"""Attempts are data; ClaimedAttempts owns "claimed, outcome not written";
a failing listener never breaks what it observes."""

from geventq.attempts import DONE, Attempt, ClaimedAttempts, Listeners, Status
from geventq.catalog import QueueCatalog
from geventq.db import quote_table


def attempt(task_id: int, table: str = "t") -> Attempt:
    row = {
        "id": task_id,
        "task_type": "x",
        "task_params": None,
        "retry_count": 1,
        "max_retries": 3,
        "schedule_time": None,
    }
    return Attempt.from_row("q", table, quote_table(table, None), row, 0.0)


def test_an_attempt_names_its_log_and_key():
    a = attempt(7)
    assert a.log_id == "t-7" and a.key == ("t", 7) and a.claimed_at is None


def test_claimed_attempts_add_settle_drop_and_hold():
    claimed = ClaimedAttempts()
    claimed.add([attempt(1), attempt(2), attempt(3, table="u")])
    assert claimed.holds("t", 1) and claimed.holds("u", 3) and not claimed.holds("u", 1)
    claimed.settle(attempt(1))
    claimed.drop(attempt(2))
    claimed.settle(attempt(99))  # settling what is not held is harmless
    assert [a.key for a in claimed.unfinished()] == [("u", 3)] and len(claimed) == 1


class Broken:
    def claimed(self, queue_name, attempts):
        raise RuntimeError("listener bug")

    def finished(self, attempt, outcome, seconds):
        raise RuntimeError("listener bug")

    def rescued(self, table_name, count):
        raise RuntimeError("listener bug")


class Counting:
    def __init__(self):
        self.events = []

    def claimed(self, queue_name, attempts):
        self.events.append(("claimed", len(attempts)))

    def finished(self, attempt, outcome, seconds):
        self.events.append(("finished", outcome.kind))

    def rescued(self, table_name, count):
        self.events.append(("rescued", count))


def test_a_failing_listener_is_skipped_and_the_others_still_hear():
    counting = Counting()
    listeners = Listeners([Broken(), counting])
    listeners.claimed("q", [attempt(1)])
    listeners.finished(attempt(1), DONE, 0.1)
    listeners.rescued("t", 4)
    assert counting.events == [("claimed", 1), ("finished", DONE.kind), ("rescued", 4)]


def test_status_codes_are_the_seed_tables():
    assert [int(status) for status in Status] == [0, 1, 2, 3, 4]
    assert Status.CANCELLED.label == "cancelled"


def test_the_catalog_skips_bad_table_names_and_keeps_the_rest():
    catalog = QueueCatalog()
    catalog.update(
        [
            {"queue_name": "a", "table_name": "a_tasks", "retention_days": 3},
            {"queue_name": "b", "table_name": "x; DROP TABLE servers"},
            {"queue_name": "c", "table_name": "other_db.c_tasks", "retention_days": None},
        ]
    )
    assert set(catalog.tables) == {"a_tasks", "other_db.c_tasks"}
    assert catalog.table("a_tasks") == "`a_tasks`" and catalog.table("nope") is None
    assert catalog.retention_days == {"a_tasks": 3, "other_db.c_tasks": 0}
    assert catalog.queue_of_table["other_db.c_tasks"] == "c"

"""The pure pieces of enqueueing: checking a task, the INSERT a batch needs,
the claim order a table's columns choose, and dedupe errors by key name."""

from datetime import datetime

import pymysql
import pytest

from geventq import admin_store, store
from geventq.db import duplicate_key
from geventq.errors import InvalidTask
from geventq.producer import TaskId, task_row, task_row_from


def test_a_plain_task_is_two_values():
    assert task_row("email", {"to": "a@b.c"}) == {"task_type": "email", "task_params": '{"to":"a@b.c"}'}
    assert task_row("email")["task_params"] == "{}"
    assert task_row("email", '{"a": 1}')["task_params"] == '{"a": 1}'


def test_options_become_columns_and_delay_microseconds():
    at = datetime(2030, 1, 31, 8, 0)
    row = task_row("t", [1], at=at, max_retries=0, priority=-3, dedupe_key="k", concurrency_key="c")
    assert row == {
        "task_type": "t",
        "task_params": "[1]",
        "schedule_time": at,
        "max_retries": 0,
        "priority": -3,
        "dedupe_key": "k",
        "concurrency_key": "c",
    }
    assert task_row("t", delay=1.5)["delay"] == 1_500_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_type": 5}, "task_type: must be a string of 1 to 50 characters, got 5"),
        ({"task_type": "x" * 51}, "task_type: must be a string of 1 to 50 characters"),
        ({"task_type": "t", "params": 3}, "params: must be a dict, a list, JSON text of one, or None, got 3"),
        ({"task_type": "t", "params": '"text"'}, "params: must be JSON text of an object or array"),
        ({"task_type": "t", "params": {"s": "\udc80"}}, "params: must be valid Unicode text"),
        ({"task_type": "t", "delay": True}, "delay: must be seconds"),
        ({"task_type": "t", "at": "2030-01-01"}, "at: must be a datetime"),
        ({"task_type": "t", "priority": 2**31}, "priority: must be an integer from -2,147,483,648"),
        ({"task_type": "t", "max_retries": 101}, "max_retries: must be an integer from 0 to 100, got 101"),
        ({"task_type": "t", "dedupe_key": ""}, "dedupe_key: must be a string of 1 to 191 characters"),
        ({"task_type": "t", "concurrency_key": 7}, "concurrency_key: must be a string of 1 to 191"),
    ],
)
def test_bad_values_name_their_field(kwargs, message):
    with pytest.raises(InvalidTask) as raised:
        task_row(**kwargs)
    assert str(raised.value).startswith(message)


def test_batch_items_are_named_by_position():
    with pytest.raises(InvalidTask, match=r"^tasks\[2\]: must be a dict"):
        task_row_from(2, "email")
    with pytest.raises(InvalidTask, match=r"^tasks\[0\]\.priority: must be an integer"):
        task_row_from(0, {"task_type": "t", "priority": "high"})


def test_a_batch_names_only_the_columns_it_sets():
    plain = [task_row("a"), task_row("b")]
    assert admin_store._insert_shape(plain) == (
        "task_type, task_params, schedule_time",
        "(%s, %s, NOW(3))",
        ["task_type", "task_params"],
    )
    mixed = [task_row("a", delay=2), task_row("b", priority=1)]
    columns, values, keys = admin_store._insert_shape(mixed)
    assert columns == "task_type, task_params, schedule_time, priority"
    assert (
        values == "(%s, %s, NOW(3) + INTERVAL COALESCE(%s, 0) MICROSECOND, COALESCE(%s, DEFAULT(priority)))"
    )
    assert keys == ["task_type", "task_params", "delay", "priority"]


def test_the_claim_order_follows_the_columns():
    assert store.claim_order(store.NO_FEATURES) == "schedule_time, id"
    assert store.claim_order(store.TaskTableFeatures(priority=True)) == "priority, schedule_time, id"
    assert not store.TaskTableFeatures(dedupe_key=True).dedupe  # a key column without its unique index
    with pytest.raises(ValueError):
        store._order("id DESC")


def test_consecutive_ids_only_where_innodb_promises_them():
    assert admin_store.consecutive_id_step({"autoinc_lock_mode": 1, "autoinc_increment": 1}) == 1
    assert admin_store.consecutive_id_step({"autoinc_lock_mode": 0, "autoinc_increment": 3}) == 3
    assert admin_store.consecutive_id_step({"autoinc_lock_mode": 2, "autoinc_increment": 1}) == 0
    assert admin_store.consecutive_id_step({"autoinc_lock_mode": None}) == 0


def test_duplicate_key_names_the_index():
    mariadb = pymysql.err.IntegrityError(1062, "Duplicate entry 'k' for key 'uk_dedupe_active'")
    mysql = pymysql.err.IntegrityError(1062, "Duplicate entry 'k' for key 'once_tasks.uk_dedupe_active'")
    assert duplicate_key(mariadb) == duplicate_key(mysql) == "uk_dedupe_active"
    assert duplicate_key(pymysql.err.IntegrityError(1048, "Column 'x' cannot be null")) is None


def test_task_id_is_an_int_that_says_whether_it_was_a_duplicate():
    task_id = TaskId(42)
    task_id.duplicate = True
    assert task_id == 42 and str(task_id) == "42" and f"{task_id}" == "42" and task_id.duplicate
    assert not TaskId(7).duplicate

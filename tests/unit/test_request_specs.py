"""Admin request specs: every problem named by its field, all at once."""

import pytest

from geventq import api_schema as spec
from geventq.api_schema import Invalid


def problems(fn, *args) -> list[str]:
    with pytest.raises(Invalid) as raised:
        fn(*args)
    return raised.value.problems


def test_task_create_fills_defaults():
    task = spec.TASK_CREATE.parse_object({"task_type": "email"})
    assert task == {"task_type": "email", "task_params": "{}", "schedule_time": None, "max_retries": 3}


def test_every_problem_of_a_body_is_reported_naming_its_field():
    found = problems(spec.TASK_CREATE.parse_object, {"task_params": 5, "max_retries": 101, "colour": "red"})
    assert [p.split(":")[0] for p in found] == ["task_params", "max_retries", "colour", "task_type"]


def test_json_text_params_must_be_an_object_or_array():
    assert (
        spec.TASK_CREATE.parse_object({"task_type": "t", "task_params": '{"a": 1}'})["task_params"]
        == '{"a": 1}'
    )
    assert problems(spec.TASK_CREATE.parse_object, {"task_type": "t", "task_params": "3"})[0].startswith(
        "task_params: must be a JSON object or array"
    )


def test_query_numbers_are_parsed_and_ranged():
    assert spec.TASK_QUERY.parse_query([("table", "email_tasks"), ("id", "42")]) == {
        "table": "email_tasks",
        "id": 42,
    }
    assert problems(spec.TASK_QUERY.parse_query, [("table", "email_tasks"), ("id", "0")])[0].startswith("id:")
    assert problems(spec.TASK_QUERY.parse_query, [("table", "a"), ("table", "b"), ("id", "1")]) == [
        "table: given more than once"
    ]


@pytest.mark.parametrize("name", ["queue_configs", "x.servers", "a b", "a;b", "1abc", "a" * 65])
def test_table_names_that_cannot_be_task_tables_are_refused(name):
    found = problems(spec.TABLE_QUERY.parse_query, [("table", name)])
    assert found and found[0].startswith("table:")


def test_a_partial_update_must_change_something():
    assert problems(spec.QUEUE_UPDATE.parse_object, {})[0].startswith("body: give at least one of")
    assert spec.QUEUE_UPDATE.parse_object({"max_workers": 3}) == {"max_workers": 3}


def test_schedule_time_with_an_offset_is_aware_and_without_is_database_time():
    aware = spec.TASK_CREATE.parse_object({"task_type": "t", "schedule_time": "2030-01-31T08:00:00+02:00"})
    naive = spec.TASK_CREATE.parse_object({"task_type": "t", "schedule_time": "2030-01-31 08:00:00"})
    assert aware["schedule_time"].utcoffset().total_seconds() == 7200
    assert naive["schedule_time"].tzinfo is None
    assert spec.to_database_time(aware["schedule_time"], 0).hour == 6


@pytest.mark.parametrize("name", ["t1\n", "db.t1\n", "t1\n.x"])
def test_a_trailing_newline_is_not_part_of_a_valid_identifier(name):
    from geventq.db import quote_table
    from geventq.errors import InvalidIdentifier

    with pytest.raises(InvalidIdentifier):
        quote_table(name, None)

"""geventq.config: layering, validation rules and error messages. No database needed."""

import dataclasses
import json
from pathlib import Path

import pytest

from geventq.config import ENV_VARS, Config, ConfigError, dump_defaults, load

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, data: dict) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps(data))
    return path


def load_data(folder: Path, data: dict, **kwargs) -> Config:
    """Load `data` as a config file, isolated from the real environment."""
    kwargs.setdefault("environ", {})
    return load(write_config(folder, data), **kwargs)


def problems_of(folder: Path, data: dict, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_data(folder, data, **kwargs)
    return info.value.problems


def the_problem(folder: Path, data: dict, **kwargs) -> str:
    problems = problems_of(folder, data, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


# --- where the file comes from ------------------------------------------------


def test_defaults_when_no_file(tmp_path, monkeypatch):
    # Given an empty working directory
    monkeypatch.chdir(tmp_path)
    # When
    cfg = load(environ={})
    # Then
    assert cfg.path is None
    assert cfg.base_dir == str(tmp_path)
    assert cfg.executor.server_id == "server-001"
    assert cfg.database.port == 3306
    assert cfg.handlers.paths == (str(tmp_path / "handlers"),)
    assert cfg.log.dir == str(tmp_path / "logs")


def test_config_json_in_cwd_is_read_by_default(tmp_path, monkeypatch):
    write_config(tmp_path, {"executor": {"server_id": "from-cwd"}})
    monkeypatch.chdir(tmp_path)
    cfg = load(environ={})
    assert cfg.executor.server_id == "from-cwd"
    assert cfg.path == str(tmp_path / "config.json")


def test_geventq_config_env_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"executor": {"server_id": "from-env-file"}}))
    monkeypatch.chdir(tmp_path)
    cfg = load(environ={"GEVENTQ_CONFIG": str(path)})
    assert cfg.executor.server_id == "from-env-file"


def test_explicit_missing_path_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json"):
        load(missing, environ={})


def test_missing_file_from_env_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"gone\.json"):
        load(environ={"GEVENTQ_CONFIG": str(tmp_path / "gone.json")})


def test_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "executor": {\n    "server_id": "x",\n  }\n}')
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(path) in str(info.value)
    assert "line 4, column 3" in str(info.value)


def test_top_level_must_be_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load(path, environ={})


# --- precedence -----------------------------------------------------------------


def test_file_values_override_defaults(tmp_path):
    cfg = load_data(tmp_path, {"database": {"host": "db.example", "pool_size": 3}})
    assert cfg.database.host == "db.example"
    assert cfg.database.pool_size == 3
    assert cfg.database.port == 3306


def test_env_overrides_file(tmp_path):
    environ = {"GEVENTQ_SERVER_ID": "from-env", "GEVENTQ_DB_PORT": "3307"}
    cfg = load_data(tmp_path, {"executor": {"server_id": "from-file"}}, environ=environ)
    assert cfg.executor.server_id == "from-env"
    assert cfg.database.port == 3307


def test_overrides_override_env(tmp_path):
    cfg = load_data(
        tmp_path,
        {},
        environ={"GEVENTQ_ADMIN_PORT": "10000"},
        overrides={"admin.port": 10001, "executor.server_id": "s2"},
    )
    assert cfg.admin.port == 10001
    assert cfg.executor.server_id == "s2"


def test_none_override_means_not_given(tmp_path):
    cfg = load_data(tmp_path, {"admin": {"port": 8000}}, overrides={"admin.port": None})
    assert cfg.admin.port == 8000


def test_environ_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("GEVENTQ_SERVER_ID", "from-os-environ")
    cfg = load(write_config(tmp_path, {}))
    assert cfg.executor.server_id == "from-os-environ"


@pytest.mark.parametrize(("name", "key"), ENV_VARS.items())
def test_every_env_var_sets_its_key(tmp_path, name, key):
    # 9998 / "::1" / "DEBUG" are valid for every key the table maps to
    values = {"port": "9998", "host": "::1", "level": "DEBUG"}
    text = values.get(key.split(".")[1], "abc_1")
    cfg = load_data(tmp_path, {}, environ={name: text})
    section, field = key.split(".")
    assert str(getattr(getattr(cfg, section), field)) == text


def test_bad_numeric_env_var_names_variable_and_key(tmp_path):
    problem = the_problem(tmp_path, {}, environ={"GEVENTQ_DB_PORT": "abc"})
    assert problem.startswith("database.port:")
    assert "GEVENTQ_DB_PORT" in problem


def test_out_of_range_env_var_names_variable(tmp_path):
    problem = the_problem(tmp_path, {}, environ={"GEVENTQ_ADMIN_PORT": "70000"})
    assert problem.startswith("admin.port:")
    assert "GEVENTQ_ADMIN_PORT" in problem


# --- types ----------------------------------------------------------------------


def test_ints_are_accepted_for_number_keys_and_stored_as_float(tmp_path):
    cfg = load_data(tmp_path, {"executor": {"heartbeat_interval": 2}})
    assert cfg.executor.heartbeat_interval == 2.0
    assert isinstance(cfg.executor.heartbeat_interval, float)


def test_fractional_intervals_are_accepted(tmp_path):
    cfg = load_data(tmp_path, {"queue": {"config_sync_interval": 0.5}})
    assert cfg.queue.config_sync_interval == 0.5


def test_bool_is_not_a_number(tmp_path):
    problem = the_problem(tmp_path, {"executor": {"heartbeat_interval": True}})
    assert problem.startswith("executor.heartbeat_interval: must be a number")
    assert problem.endswith("got true")


def test_bool_is_not_an_integer(tmp_path):
    problem = the_problem(tmp_path, {"database": {"port": True}})
    assert problem.startswith("database.port: must be an integer")


def test_float_is_not_an_integer(tmp_path):
    problem = the_problem(tmp_path, {"database": {"port": 3306.0}})
    assert problem.startswith("database.port: must be an integer")


def test_string_is_not_a_number_in_the_file(tmp_path):
    problem = the_problem(tmp_path, {"database": {"port": "3306"}})
    assert problem == 'database.port: must be an integer from 1 to 65535, got "3306"'


def test_wrong_type_for_a_string(tmp_path):
    problem = the_problem(tmp_path, {"executor": {"server_id": 7}})
    assert problem.startswith("executor.server_id: must be a string")


def test_wrong_type_for_a_bool(tmp_path):
    problem = the_problem(tmp_path, {"queue": {"enable": 1}})
    assert problem == "queue.enable: must be true or false, got 1"


def test_secrets_are_not_echoed(tmp_path):
    problem = the_problem(tmp_path, {"database": {"password": 12345}})
    assert problem.startswith("database.password:")
    assert "12345" not in problem


def test_secrets_are_not_in_repr(tmp_path):
    cfg = load_data(tmp_path, {"database": {"password": "hunter2"}})
    assert "hunter2" not in repr(cfg)


# --- ranges and patterns --------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("executor", "heartbeat_interval", -1),
        ("executor", "heartbeat_interval", 0),
        ("executor", "heartbeat_interval", 3601),
        ("executor", "shutdown_timeout", -0.1),
        ("database", "port", 0),
        ("database", "port", 65536),
        ("database", "pool_size", 1001),
        ("database", "connect_timeout", 61),
        ("database", "read_timeout", 0),
        ("admin", "port", -1),
        ("queue", "completion_flush_interval", 5.5),
        ("queue", "retry_backoff_max", 604801),
        ("log", "retention_days", 0),
        ("smtp", "timeout", 601),
        ("executor", "block_threshold", 0),
    ],
)
def test_out_of_range_names_the_key(tmp_path, section, key, value):
    problem = the_problem(tmp_path, {section: {key: value}})
    assert problem.startswith(f"{section}.{key}: must be ")
    assert problem.endswith(f"got {value}")


def test_out_of_range_message_says_the_bound(tmp_path):
    problem = the_problem(tmp_path, {"executor": {"heartbeat_timeout": -1}})
    assert problem == "executor.heartbeat_timeout: must be a number greater than 0, got -1"


@pytest.mark.parametrize("port", [0, 65535])
def test_admin_port_bounds_are_inclusive(tmp_path, port):
    assert load_data(tmp_path, {"admin": {"port": port}}).admin.port == port


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("executor", "server_id", ""),
        ("executor", "server_id", "has space"),
        ("executor", "server_id", "x" * 51),
        ("database", "database", "1starts_with_digit"),
        ("database", "database", "drop`table"),
        ("database", "charset", "utf8-mb4"),
        ("database", "host", ""),
        ("admin", "host", ""),
        ("log", "level", "LOUD"),
        ("handlers", "paths", []),
        ("handlers", "paths", [""]),
        ("handlers", "paths", "handlers"),
    ],
)
def test_bad_strings_are_rejected(tmp_path, section, key, value):
    problem = the_problem(tmp_path, {section: {key: value}})
    assert problem.startswith(f"{section}.{key}: must be ")


def test_server_id_accepts_its_whole_alphabet(tmp_path):
    server_id = "host-1_a.b:c@d"
    cfg = load_data(tmp_path, {"executor": {"server_id": server_id}})
    assert cfg.executor.server_id == server_id


def test_log_level_is_case_insensitive_and_stored_upper(tmp_path):
    assert load_data(tmp_path, {"log": {"level": "debug"}}).log.level == "DEBUG"


# --- rules joining two keys -----------------------------------------------------


def test_heartbeat_timeout_below_twice_interval_names_timeout(tmp_path):
    data = {"executor": {"heartbeat_interval": 5, "heartbeat_timeout": 9}}
    problem = the_problem(tmp_path, data)
    assert problem.startswith("executor.heartbeat_timeout: must be at least 2 *")


def test_heartbeat_timeout_of_exactly_twice_interval_is_ok(tmp_path):
    data = {"executor": {"heartbeat_interval": 5, "heartbeat_timeout": 10}}
    assert load_data(tmp_path, data).executor.heartbeat_timeout == 10.0


def test_non_loopback_admin_without_token_names_admin_token(tmp_path):
    problem = the_problem(tmp_path, {"admin": {"host": "0.0.0.0"}})
    assert problem.startswith("admin.token:")
    assert "non-loopback" in problem


def test_non_loopback_admin_with_token_is_ok(tmp_path):
    cfg = load_data(tmp_path, {"admin": {"host": "0.0.0.0", "token": "s3cret"}})
    assert cfg.admin.token == "s3cret"


def test_non_loopback_admin_from_env_needs_token_too(tmp_path):
    problem = the_problem(tmp_path, {}, environ={"GEVENTQ_ADMIN_HOST": "10.0.0.5"})
    assert problem.startswith("admin.token:")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "::1", "localhost", "LocalHost"])
def test_loopback_admin_needs_no_token(tmp_path, host):
    assert load_data(tmp_path, {"admin": {"host": host}}).admin.host == host


# --- unknown names --------------------------------------------------------------


def test_unknown_key_suggests_the_close_match(tmp_path):
    problem = the_problem(tmp_path, {"executor": {"heartbeat_intervall": 5}})
    assert problem == ("executor.heartbeat_intervall: unknown key, did you mean executor.heartbeat_interval?")


def test_unknown_key_without_close_match_has_no_suggestion(tmp_path):
    problem = the_problem(tmp_path, {"database": {"zzz": 1}})
    assert problem == "database.zzz: unknown key"


def test_unknown_section_suggests_the_close_match(tmp_path):
    problem = the_problem(tmp_path, {"databse": {"host": "x"}})
    assert problem == "databse: unknown section, did you mean database?"


def test_unknown_override_key_is_reported(tmp_path):
    problem = the_problem(tmp_path, {}, overrides={"admn.port": 1})
    assert problem == "admn.port: unknown key, did you mean admin.port?"


def test_section_that_is_not_an_object_is_named(tmp_path):
    assert the_problem(tmp_path, {"admin": 5}) == "admin: must be an object, got 5"


# --- all problems at once -------------------------------------------------------


def test_every_problem_is_reported_one_per_line(tmp_path):
    data = {
        "executor": {"heartbeat_interval": -1, "bogus": 1},
        "database": {"port": "x"},
        "log": {"level": "LOUD"},
    }
    with pytest.raises(ConfigError) as info:
        load_data(tmp_path, data, environ={"GEVENTQ_ADMIN_PORT": "nope"})
    keys = [line.split(":")[0] for line in str(info.value).splitlines()]
    assert sorted(keys) == sorted(
        [
            "executor.bogus",
            "executor.heartbeat_interval",
            "database.port",
            "log.level",
            "admin.port",
        ]
    )
    assert info.value.problems == str(info.value).splitlines()


# --- paths ----------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    data = {"handlers": {"paths": ["h", "/abs/h"]}, "log": {"dir": "../var/log"}}
    cfg = load_data(folder, data)
    assert cfg.base_dir == str(folder)
    assert cfg.handlers.paths == (str(folder / "h"), "/abs/h")
    assert cfg.log.dir == str(tmp_path / "var" / "log")


def test_override_paths_resolve_against_the_config_folder(tmp_path):
    cfg = load_data(tmp_path, {}, overrides={"handlers.paths": ["x"]})
    assert cfg.handlers.paths == (str(tmp_path / "x"),)


# --- the result and the shipped file ---------------------------------------------


def test_config_is_frozen(tmp_path):
    cfg = load_data(tmp_path, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.executor.server_id = "other"


def test_dataclass_fields_match_the_schema(tmp_path):
    cfg = load_data(tmp_path, {})
    defaults = dump_defaults()
    fields = {name: [f.name for f in dataclasses.fields(getattr(cfg, name))] for name in defaults}
    assert fields == {name: list(keys) for name, keys in defaults.items()}


def test_env_vars_map_to_known_keys():
    known = {f"{s}.{k}" for s, keys in dump_defaults().items() for k in keys}
    assert set(ENV_VARS.values()) <= known


def test_dump_defaults_returns_a_copy():
    dump_defaults()["handlers"]["paths"].append("mutated")
    assert dump_defaults()["handlers"]["paths"] == ["handlers"]


def test_shipped_config_json_has_every_key_at_its_default():
    shipped = json.loads((REPO_ROOT / "config.json").read_text())
    assert shipped == dump_defaults()


def test_shipped_config_json_loads_to_the_defaults():
    cfg = load(REPO_ROOT / "config.json", environ={})
    expected = dump_defaults()
    expected["handlers"]["paths"] = (str(REPO_ROOT / "handlers"),)
    expected["log"]["dir"] = str(REPO_ROOT / "logs")
    expected["database"]["hosts"] = ()  # lists load as tuples: config values are frozen
    loaded = dataclasses.asdict(cfg)
    assert (loaded.pop("path"), loaded.pop("base_dir")) == (
        str(REPO_ROOT / "config.json"),
        str(REPO_ROOT),
    )
    assert loaded == expected

"""Load config.json, the environment and CLI overrides into frozen dataclasses.

Precedence: defaults < file < environment < overrides. Every problem is
collected and reported at once, one line per key, so a broken deployment is
fixed in one pass instead of one restart per mistake. This is the only module
of the package that reads os.environ.

Each key is declared once, as a field of its section's dataclass, with its
default and the kind of value it takes (geventq.validation, shared with the
admin API); the tables that loading works from are derived from those fields.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from geventq.errors import ConfigError
from geventq.validation import (
    Boolean,
    HostList,
    Integer,
    Kind,
    Number,
    OneOf,
    Problem,
    String,
    StringList,
    mismatch,
    named,
    split_host_port,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_VARS",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "ExecutorConfig",
    "HandlersConfig",
    "LogConfig",
    "QueueConfig",
    "SmtpConfig",
    "dump_defaults",
    "load",
]

CONFIG_ENV = "GEVENTQ_CONFIG"
DEFAULT_FILE = "config.json"

# Environment variable -> dotted key. The README lists this table.
ENV_VARS: dict[str, str] = {
    "GEVENTQ_SERVER_ID": "executor.server_id",
    "GEVENTQ_DB_HOST": "database.host",
    "GEVENTQ_DB_PORT": "database.port",
    "GEVENTQ_DB_USER": "database.username",
    "GEVENTQ_DB_PASSWORD": "database.password",
    "GEVENTQ_DB_NAME": "database.database",
    "GEVENTQ_ADMIN_HOST": "admin.host",
    "GEVENTQ_ADMIN_PORT": "admin.port",
    "GEVENTQ_ADMIN_TOKEN": "admin.token",
    "GEVENTQ_LOG_LEVEL": "log.level",
}

_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


# --- declaring a key ----------------------------------------------------------

_KEY = "geventq.config.key"  # where a section field keeps its _Key in dataclasses metadata


@dataclass(frozen=True)
class _Key:
    default: Any  # as config.json spells it: dump_defaults() writes it out
    kind: Kind
    path: bool = False  # relative values are resolved against the config folder
    secret: bool = False  # never echoed back in an error message, nor in repr()


def key(default: Any, kind: Kind, *, path: bool = False, secret: bool = False) -> Any:
    """A section field that is a config key: its default and the kind of value it takes.

    The section dataclasses below are the one declaration of every key; the
    table that loading works from is derived from them (_SECTIONS). The field
    itself gets no default: load() passes every value, so no section is ever
    built from a value that skipped the check.
    """
    return field(repr=not secret, metadata={_KEY: _Key(default, kind, path, secret)})


# --- the sections: every key, its default and its rule -----------------------


@dataclass(frozen=True)
class DatabaseConfig:
    host: str = key("127.0.0.1", String(min_length=1))
    port: int = key(3306, Integer(minimum=1, maximum=65535))
    # Nodes of a multi-primary cluster (Galera), "host:port", the first
    # preferred; when set, host and port are not used. See nodes().
    hosts: tuple[str, ...] = key([], HostList())
    username: str = key("root", String())
    password: str = key("", String(), secret=True)
    # it is also an identifier in CREATE DATABASE, so it must be a safe one
    database: str = key("xxljob_executor", String(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"))
    charset: str = key("utf8mb4", String(pattern=r"^[A-Za-z0-9_]+$"))
    pool_size: int = key(20, Integer(minimum=1, maximum=1000))
    connect_timeout: float = key(5, Number(greater_than=0, maximum=60))
    # seconds a query may wait for the server's reply
    read_timeout: float = key(30, Number(greater_than=0, maximum=3600))
    # auto: SKIP LOCKED where the server has it (MariaDB 10.6+, MySQL 8.0.1+),
    # else a conditional UPDATE per candidate; either can be forced.
    claim_mode: str = key("auto", OneOf(("auto", "skip_locked", "conditional_update"), ignore_case=True))

    def nodes(self) -> tuple[tuple[str, int], ...]:
        """The database nodes to connect to, in order of preference."""
        if self.hosts:
            return tuple(split_host_port(text) for text in self.hosts)
        return ((self.host, self.port),)


@dataclass(frozen=True)
class ExecutorConfig:
    server_id: str = key("server-001", String(pattern=r"^[A-Za-z0-9_.:@-]{1,50}$"))
    heartbeat_interval: float = key(5, Number(greater_than=0, maximum=3600))
    # also at least 2 * heartbeat_interval: see _check_heartbeat
    heartbeat_timeout: float = key(30, Number(greater_than=0))
    shutdown_timeout: float = key(30, Number(minimum=0, maximum=86400))
    # gevent's hub monitor thread, which logs handlers that block the hub
    monitor_thread: bool = key(True, Boolean())
    # seconds a handler may block the hub before it is logged
    block_threshold: float = key(1.0, Number(greater_than=0))
    # executor processes on this host; 2 or more runs a supervisor (geventq.supervisor)
    processes: int = key(1, Integer(minimum=1, maximum=256))
    # a file holding the running supervisor's (or executor's) pid; "" = none
    pidfile: str = key("", String(), path=True)


@dataclass(frozen=True)
class QueueConfig:
    enable: bool = key(True, Boolean())
    config_sync_interval: float = key(10, Number(greater_than=0, maximum=86400))
    retry_backoff_base: float = key(5, Number(minimum=0, maximum=86400))
    retry_backoff_max: float = key(3600, Number(minimum=0, maximum=604800))
    # seconds completions may wait to be written together
    completion_flush_interval: float = key(0.005, Number(greater_than=0, maximum=5))
    # days a schedule's fires stay in schedule_fires (its latest scheduled fire always stays); 0 = forever
    schedule_history_days: int = key(30, Integer(minimum=0, maximum=36500))


@dataclass(frozen=True)
class AdminConfig:
    host: str = key("127.0.0.1", String(min_length=1))
    port: int = key(9999, Integer(minimum=0, maximum=65535))  # 0 picks a free port
    # required for a non-loopback host: see _check_admin_token
    token: str = key("", String(), secret=True)
    metrics_auth: bool = key(False, Boolean())  # true: /metrics needs the token too


@dataclass(frozen=True)
class HandlersConfig:
    paths: tuple[str, ...] = key(["handlers"], StringList(), path=True)


@dataclass(frozen=True)
class LogConfig:
    dir: str = key("logs", String(), path=True)
    level: str = key("INFO", OneOf(_LOG_LEVELS, ignore_case=True))
    retention_days: int = key(7, Integer(minimum=1, maximum=3650))


@dataclass(frozen=True)
class SmtpConfig:
    host: str = key("127.0.0.1", String())
    port: int = key(25, Integer(minimum=1, maximum=65535))
    username: str = key("", String())
    password: str = key("", String(), secret=True)
    starttls: bool = key(False, Boolean())
    sender: str = key("geventq@localhost", String())
    timeout: float = key(10, Number(greater_than=0, maximum=600))


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig
    executor: ExecutorConfig
    queue: QueueConfig
    admin: AdminConfig
    handlers: HandlersConfig
    log: LogConfig
    smtp: SmtpConfig
    path: str | None  # absolute path of the file read, None when running on defaults
    base_dir: str  # relative paths were resolved against this folder


# --- the table loading works from, derived from the declarations above ------------

# section name -> its dataclass: the attributes of Config that are sections
_SECTION_TYPES: dict[str, type] = {
    name: hint
    for name, hint in get_type_hints(Config).items()
    if isinstance(hint, type) and is_dataclass(hint)
}
# section name -> key name -> _Key, in declaration order
_SECTIONS: dict[str, dict[str, _Key]] = {
    section: {item.name: item.metadata[_KEY] for item in fields(cls)}
    for section, cls in _SECTION_TYPES.items()
}
_KEYS: dict[str, _Key] = {
    f"{section}.{name}": spec for section, keys in _SECTIONS.items() for name, spec in keys.items()
}


# --- public API --------------------------------------------------------------


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    search: bool = True,
) -> Config:
    """Read, merge and validate the configuration; raise ConfigError listing every problem.

    `overrides` maps dotted keys to values (from the CLI); a None value means
    "not given", so the CLI can pass its options through unfiltered.
    Without `path`, the file is $GEVENTQ_CONFIG or ./config.json if it exists;
    `search=False` reads no file then (geventq.Client given its database keys).
    """
    environ = os.environ if environ is None else environ
    file = _locate(path, environ) if path is not None or search else None
    base_dir = os.path.dirname(file) if file else os.getcwd()
    merged, problems = _merge(file, environ, overrides or {})
    values, invalid = _validate(merged)
    problems += invalid + _cross_check(values)
    if problems:
        raise ConfigError("\n".join(problems), problems)
    return _build(_resolve_paths(values, base_dir), file, base_dir)


def dump_defaults() -> dict[str, dict[str, Any]]:
    """The default configuration as plain JSON-ready data, section by section."""
    return {
        section: {name: copy.deepcopy(spec.default) for name, spec in keys.items()}
        for section, keys in _SECTIONS.items()
    }


# --- reading the layers --------------------------------------------------------

# key -> (value, where it came from); the origin is named in error messages
# so a bad environment variable or CLI flag is found without guessing.
_Merged = dict[str, tuple[Any, str | None]]


def _locate(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> str | None:
    """The config file to read, or None to run on defaults."""
    explicit = path if path is not None else environ.get(CONFIG_ENV) or None
    if explicit is not None:
        return os.path.abspath(explicit)  # must exist: _read_file says so if not
    return os.path.abspath(DEFAULT_FILE) if os.path.exists(DEFAULT_FILE) else None


def _merge(
    file: str | None, environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[_Merged, list[str]]:
    file_values, problems = _sections_to_keys(_read_file(file)) if file else ({}, [])
    given = {dotted: value for dotted, value in overrides.items() if value is not None}
    problems += [_unknown(dotted) for dotted in [*file_values, *given] if dotted not in _KEYS]

    merged: _Merged = {dotted: (spec.default, None) for dotted, spec in _KEYS.items()}
    merged.update((dotted, (value, None)) for dotted, value in file_values.items() if dotted in _KEYS)
    merged.update(_env_values(environ))
    merged.update((dotted, (value, "overrides")) for dotted, value in given.items() if dotted in _KEYS)
    return merged, problems


def _read_file(file: str) -> dict[str, Any]:
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ConfigError(message) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: must hold a JSON object of sections, got {_show(data)}")
    return data


def _sections_to_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flatten {"section": {"key": v}} to {"section.key": v}; unknown keys are checked later."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for section, body in data.items():
        if section not in _SECTIONS:
            problems.append(_unknown(section))
        elif not isinstance(body, dict):
            problems.append(named(section, mismatch("an object", _show(body))))
        else:
            values.update((f"{section}.{name}", value) for name, value in body.items())
    return values, problems


def _env_values(environ: Mapping[str, str]) -> _Merged:
    return {
        dotted: (_read_env(_KEYS[dotted].kind, environ[name]), f"environment variable {name}")
        for name, dotted in ENV_VARS.items()
        if name in environ
    }


def _read_env(kind: Kind, text: str) -> Any:
    """An environment variable's text as the key's kind reads it (a port as an
    int); text it cannot read is kept, so the check reports it with the rest."""
    try:
        return kind.from_text(text)
    except Problem:
        return text


def _unknown(dotted: str) -> str:
    kind = "key" if "." in dotted else "section"
    suggestion = _suggest(dotted)
    hint = f", did you mean {suggestion}?" if suggestion else ""
    return f"{dotted}: unknown {kind}{hint}"


def _suggest(dotted: str) -> str | None:
    """The closest known section, or section.key, to a misspelt one."""
    section, _, name = dotted.partition(".")
    if section not in _SECTIONS:
        close = difflib.get_close_matches(section, _SECTIONS, n=1)
        if not close:
            return None
        section = close[0]
    if not name:
        return section
    close = difflib.get_close_matches(name, _SECTIONS[section], n=1)
    return f"{section}.{close[0]}" if close else None


# --- validation --------------------------------------------------------------


def _validate(merged: _Merged) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for dotted, (value, origin) in merged.items():
        spec = _KEYS[dotted]
        try:
            values[dotted] = spec.kind.check(value)
        except Problem as problem:
            problems.append(_invalid(dotted, spec, value, origin, problem))
    return values, problems


def _invalid(dotted: str, spec: _Key, value: Any, origin: str | None, problem: Problem) -> str:
    # The whole value is shown, as the file spells it, rather than its type:
    # the user wrote it and looks for it. A secret is never shown.
    shown = "(value hidden)" if spec.secret else _show(value)
    source = f" (from {origin})" if origin else ""
    return named(dotted, problem.showing(shown + source))


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _cross_check(values: dict[str, Any]) -> list[str]:
    """Rules that join two keys; skipped when either key is already invalid."""
    problems = (_check_heartbeat(values), _check_admin_token(values))
    return [problem for problem in problems if problem]


def _check_heartbeat(values: dict[str, Any]) -> str | None:
    interval = values.get("executor.heartbeat_interval")
    timeout = values.get("executor.heartbeat_timeout")
    if interval is None or timeout is None or timeout >= 2 * interval:
        return None
    # One late heartbeat must not get a live server declared dead and its
    # running tasks rescued (and run twice).
    expectation = (
        f"at least 2 * executor.heartbeat_interval ({2 * interval:g}) "
        "so one late heartbeat is not taken for a dead server"
    )
    return named("executor.heartbeat_timeout", mismatch(expectation, f"{timeout:g}"))


def _check_admin_token(values: dict[str, Any]) -> str | None:
    host = values.get("admin.host")
    if host is None or values.get("admin.token") != "" or _is_loopback(host):
        return None
    return named(
        "admin.token",
        f"must be set when admin.host is {_show(host)}: the admin API can create, change "
        "and delete queues and tasks, so a non-loopback admin needs a token",
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


# --- building the result -------------------------------------------------------


def _resolve_paths(values: dict[str, Any], base_dir: str) -> dict[str, Any]:
    def resolve(path: str) -> str:
        # "" means "not set" (executor.pidfile), not the config folder
        return os.path.normpath(os.path.join(base_dir, path)) if path else path

    resolved = dict(values)
    for dotted, spec in _KEYS.items():
        if spec.path:
            value = values[dotted]
            resolved[dotted] = tuple(map(resolve, value)) if isinstance(value, tuple) else resolve(value)
    return resolved


def _build(values: dict[str, Any], file: str | None, base_dir: str) -> Config:
    sections = {
        section: cls(**{name: values[f"{section}.{name}"] for name in _SECTIONS[section]})
        for section, cls in _SECTION_TYPES.items()
    }
    return Config(**sections, path=file, base_dir=base_dir)

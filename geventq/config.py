"""Load config.json, the environment and CLI overrides into frozen dataclasses.

Precedence: defaults < file < environment < overrides. Every problem is
collected and reported at once, one line per key, so a broken deployment is
fixed in one pass instead of one restart per mistake. This is the only module
of the package that reads os.environ.
"""

from __future__ import annotations

import copy
import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from geventq.errors import ConfigError

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


# --- value checks: each completes the sentence "<key>: must be ..." ---------


class _Check:
    def describe(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def normalize(self, value: Any) -> Any:
        return value

    def from_env(self, text: str) -> Any:
        return text


@dataclass(frozen=True)
class _Number(_Check):
    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    noun: ClassVar[str] = "a number"
    # ints are fine where seconds are expected: "intervals may be fractional"
    types: ClassVar[tuple[type, ...]] = (int, float)

    def describe(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"{self.noun} from {self.ge} to {self.le}"
        bounds = (
            ("greater than", self.gt),
            ("at least", self.ge),
            ("at most", self.le),
        )
        return f"{self.noun} " + " and ".join(
            f"{w} {n}" for w, n in bounds if n is not None
        )

    def accepts(self, value: Any) -> bool:
        # bool is an int subclass, but JSON true is not 1
        if isinstance(value, bool) or not isinstance(value, self.types):
            return False
        # math.isfinite overflows on huge ints, and ints are always finite
        finite = isinstance(value, int) or math.isfinite(value)
        return finite and self._in_range(value)

    def _in_range(self, value: float) -> bool:
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.le is None or value <= self.le)
        )

    def normalize(self, value: Any) -> float:
        return float(value)

    def from_env(self, text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text  # left as text so the check reports it, naming the variable


@dataclass(frozen=True)
class _Int(_Number):
    noun: ClassVar[str] = "an integer"
    types: ClassVar[tuple[type, ...]] = (int,)

    def normalize(self, value: Any) -> int:
        return value

    def from_env(self, text: str) -> Any:
        try:
            return int(text)
        except ValueError:
            return text


@dataclass(frozen=True)
class _Str(_Check):
    pattern: str | None = None
    non_empty: bool = False

    def describe(self) -> str:
        if self.pattern:
            return f"a string matching {self.pattern}"
        return "a non-empty string" if self.non_empty else "a string"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str) or (self.non_empty and not value):
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


class _Bool(_Check):
    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class _OneOf(_Check):
    choices: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)} (any case)"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.upper() in {choice.upper() for choice in self.choices}

    def normalize(self, value: Any) -> str:
        """The choice as the schema spells it."""
        return next(choice for choice in self.choices if choice.upper() == value.upper())


class _StrList(_Check):
    def describe(self) -> str:
        return "a non-empty list of non-empty strings"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or not value:
            return False
        return all(isinstance(item, str) and item for item in value)

    def normalize(self, value: Any) -> tuple[str, ...]:
        return tuple(value)


@dataclass(frozen=True)
class _Key:
    default: Any
    check: _Check
    path: bool = False  # relative values are resolved against the config folder
    secret: bool = False  # never echoed back in an error message


# --- the schema: every section, key, default and rule -----------------------

_SCHEMA: dict[str, dict[str, _Key]] = {
    "database": {
        "host": _Key("127.0.0.1", _Str(non_empty=True)),
        "port": _Key(3306, _Int(ge=1, le=65535)),
        "username": _Key("root", _Str()),
        "password": _Key("", _Str(), secret=True),
        # it is also an identifier in CREATE DATABASE, so it must be a safe one
        "database": _Key("xxljob_executor", _Str(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")),
        "charset": _Key("utf8mb4", _Str(r"^[A-Za-z0-9_]+$")),
        "pool_size": _Key(20, _Int(ge=1, le=1000)),
        "connect_timeout": _Key(5, _Number(gt=0, le=60)),
        # seconds a query may wait for the server's reply
        "read_timeout": _Key(30, _Number(gt=0, le=3600)),
        # auto: SKIP LOCKED where the server has it (MariaDB 10.6+, MySQL 8.0.1+),
        # else a conditional UPDATE per candidate; either can be forced.
        "claim_mode": _Key("auto", _OneOf(("auto", "skip_locked", "conditional_update"))),
    },
    "executor": {
        "server_id": _Key("server-001", _Str(r"^[A-Za-z0-9_.:@-]{1,50}$")),
        "heartbeat_interval": _Key(5, _Number(gt=0, le=3600)),
        # also at least 2 * heartbeat_interval: see _check_heartbeat
        "heartbeat_timeout": _Key(30, _Number(gt=0)),
        "shutdown_timeout": _Key(30, _Number(ge=0, le=86400)),
        # gevent's hub monitor thread, which logs handlers that block the hub
        "monitor_thread": _Key(True, _Bool()),
        # seconds a handler may block the hub before it is logged
        "block_threshold": _Key(1.0, _Number(gt=0)),
    },
    "queue": {
        "enable": _Key(True, _Bool()),
        "config_sync_interval": _Key(10, _Number(gt=0, le=86400)),
        "retry_backoff_base": _Key(5, _Number(ge=0, le=86400)),
        "retry_backoff_max": _Key(3600, _Number(ge=0, le=604800)),
        # seconds completions may wait to be written together
        "completion_flush_interval": _Key(0.005, _Number(gt=0, le=5)),
    },
    "admin": {
        "host": _Key("127.0.0.1", _Str(non_empty=True)),
        "port": _Key(9999, _Int(ge=0, le=65535)),  # 0 picks a free port
        # required for a non-loopback host: see _check_admin_token
        "token": _Key("", _Str(), secret=True),
        "metrics_auth": _Key(False, _Bool()),  # true: /metrics needs the token too
    },
    "handlers": {
        "paths": _Key(["handlers"], _StrList(), path=True),
    },
    "log": {
        "dir": _Key("logs", _Str(), path=True),
        "level": _Key("INFO", _OneOf(_LOG_LEVELS)),
        "retention_days": _Key(7, _Int(ge=1, le=3650)),
    },
    "smtp": {
        "host": _Key("127.0.0.1", _Str()),
        "port": _Key(25, _Int(ge=1, le=65535)),
        "username": _Key("", _Str()),
        "password": _Key("", _Str(), secret=True),
        "starttls": _Key(False, _Bool()),
        "sender": _Key("geventq@localhost", _Str()),
        "timeout": _Key(10, _Number(gt=0, le=600)),
    },
}

_KEYS: dict[str, _Key] = {
    f"{section}.{name}": key
    for section, keys in _SCHEMA.items()
    for name, key in keys.items()
}


# --- the result --------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseConfig:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    database: str
    charset: str
    pool_size: int
    connect_timeout: float
    read_timeout: float
    claim_mode: str


@dataclass(frozen=True)
class ExecutorConfig:
    server_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    shutdown_timeout: float
    monitor_thread: bool
    block_threshold: float


@dataclass(frozen=True)
class QueueConfig:
    enable: bool
    config_sync_interval: float
    retry_backoff_base: float
    retry_backoff_max: float
    completion_flush_interval: float


@dataclass(frozen=True)
class AdminConfig:
    host: str
    port: int
    token: str = field(repr=False)
    metrics_auth: bool


@dataclass(frozen=True)
class HandlersConfig:
    paths: tuple[str, ...]


@dataclass(frozen=True)
class LogConfig:
    dir: str
    level: str
    retention_days: int


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    starttls: bool
    sender: str
    timeout: float


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


_SECTION_TYPES: dict[str, type] = {
    "database": DatabaseConfig,
    "executor": ExecutorConfig,
    "queue": QueueConfig,
    "admin": AdminConfig,
    "handlers": HandlersConfig,
    "log": LogConfig,
    "smtp": SmtpConfig,
}


# --- public API --------------------------------------------------------------


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, merge and validate the configuration; raise ConfigError listing every problem.

    `overrides` maps dotted keys to values (from the CLI); a None value means
    "not given", so the CLI can pass its options through unfiltered.
    """
    environ = os.environ if environ is None else environ
    file = _locate(path, environ)
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
        section: {name: copy.deepcopy(key.default) for name, key in keys.items()}
        for section, keys in _SCHEMA.items()
    }


# --- reading the layers --------------------------------------------------------

# key -> (value, where it came from); the origin is named in error messages
# so a bad environment variable or CLI flag is found without guessing.
_Merged = dict[str, tuple[Any, str | None]]


def _locate(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str]
) -> str | None:
    """The config file to read, or None to run on defaults."""
    explicit = path if path is not None else environ.get(CONFIG_ENV) or None
    if explicit is not None:
        return os.path.abspath(explicit)  # must exist: _read_file says so if not
    return os.path.abspath(DEFAULT_FILE) if os.path.exists(DEFAULT_FILE) else None


def _merge(
    file: str | None, environ: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[_Merged, list[str]]:
    file_values, problems = _sections_to_keys(_read_file(file)) if file else ({}, [])
    given = {key: value for key, value in overrides.items() if value is not None}
    problems += [_unknown(key) for key in [*file_values, *given] if key not in _KEYS]

    merged: _Merged = {key: (spec.default, None) for key, spec in _KEYS.items()}
    merged.update(
        (key, (value, None)) for key, value in file_values.items() if key in _KEYS
    )
    merged.update(_env_values(environ))
    merged.update(
        (key, (value, "overrides")) for key, value in given.items() if key in _KEYS
    )
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
        message = (
            f"{file}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        )
        raise ConfigError(message) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: must hold a JSON object of sections, got {_show(data)}"
        )
    return data


def _sections_to_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flatten {"section": {"key": v}} to {"section.key": v}; unknown keys are checked later."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for section, body in data.items():
        if section not in _SCHEMA:
            problems.append(_unknown(section))
        elif not isinstance(body, dict):
            problems.append(f"{section}: must be an object, got {_show(body)}")
        else:
            values.update((f"{section}.{name}", value) for name, value in body.items())
    return values, problems


def _env_values(environ: Mapping[str, str]) -> _Merged:
    return {
        key: (_KEYS[key].check.from_env(environ[name]), f"environment variable {name}")
        for name, key in ENV_VARS.items()
        if name in environ
    }


def _unknown(dotted: str) -> str:
    kind = "key" if "." in dotted else "section"
    suggestion = _suggest(dotted)
    hint = f", did you mean {suggestion}?" if suggestion else ""
    return f"{dotted}: unknown {kind}{hint}"


def _suggest(dotted: str) -> str | None:
    """The closest known section, or section.key, to a misspelt one."""
    section, _, name = dotted.partition(".")
    if section not in _SCHEMA:
        close = difflib.get_close_matches(section, _SCHEMA, n=1)
        if not close:
            return None
        section = close[0]
    if not name:
        return section
    close = difflib.get_close_matches(name, _SCHEMA[section], n=1)
    return f"{section}.{close[0]}" if close else None


# --- validation --------------------------------------------------------------


def _validate(merged: _Merged) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for dotted, (value, origin) in merged.items():
        spec = _KEYS[dotted]
        if spec.check.accepts(value):
            values[dotted] = spec.check.normalize(value)
        else:
            problems.append(_invalid(dotted, spec, value, origin))
    return values, problems


def _invalid(dotted: str, spec: _Key, value: Any, origin: str | None) -> str:
    shown = "(value hidden)" if spec.secret else _show(value)
    source = f" (from {origin})" if origin else ""
    return f"{dotted}: must be {spec.check.describe()}, got {shown}{source}"


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
    return (
        f"executor.heartbeat_timeout: must be at least 2 * executor.heartbeat_interval "
        f"({2 * interval:g}) so one late heartbeat is not taken for a dead server, "
        f"got {timeout:g}"
    )


def _check_admin_token(values: dict[str, Any]) -> str | None:
    host = values.get("admin.host")
    if host is None or values.get("admin.token") != "" or _is_loopback(host):
        return None
    return (
        f"admin.token: must be set when admin.host is {_show(host)}: the admin API can "
        "create, change and delete queues and tasks, so a non-loopback admin needs a token"
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
        return os.path.normpath(os.path.join(base_dir, path))

    resolved = dict(values)
    for dotted, spec in _KEYS.items():
        if spec.path:
            value = values[dotted]
            resolved[dotted] = (
                tuple(map(resolve, value))
                if isinstance(value, tuple)
                else resolve(value)
            )
    return resolved


def _build(values: dict[str, Any], file: str | None, base_dir: str) -> Config:
    sections = {
        section: cls(**{name: values[f"{section}.{name}"] for name in _SCHEMA[section]})
        for section, cls in _SECTION_TYPES.items()
    }
    return Config(**sections, path=file, base_dir=base_dir)

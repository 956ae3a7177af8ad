"""Kinds of value, shared by config.json (geventq.config) and the admin API
(geventq.api_schema).

A kind checks one value and says in words what it expects, so every problem
reads the same way: "<name>: must be <expectation>, got <what came>". The
name is added by whoever knows it (a dotted config key, a request field);
a kind only knows the value. A kind also reads a value written as text (an
environment variable, a query string) and describes itself as JSON Schema,
so the OpenAPI document states the very rules the API enforces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import ujson

__all__ = [
    "Boolean",
    "Integer",
    "Kind",
    "Number",
    "OneOf",
    "Problem",
    "String",
    "StringList",
    "clip",
    "mismatch",
    "named",
    "type_name",
]

# --- problems -------------------------------------------------------------------


class Problem(ValueError):
    """What is wrong with one value, worded to follow its name.

    `expectation` is set when the value does not match its kind ("must be
    <expectation>, got ..."), so a caller may account for the value its own
    way; it is None for problems of another shape (JSON text that does not
    parse, a date out of range).
    """

    def __init__(self, text: str, expectation: str | None = None):
        super().__init__(text)
        self.expectation = expectation

    def showing(self, got: str) -> Problem:
        """The same problem with another account of the value that came.

        config.py echoes the whole value (or hides a secret) where the admin
        API, whose requests may be large, names the value's type or length.
        """
        return mismatch(self.expectation, got) if self.expectation else self


def mismatch(expectation: str, got: str) -> Problem:
    """The one way a value that does not fit is described."""
    return Problem(f"must be {expectation}, got {got}", expectation)


def named(name: str, problem: Problem | str) -> str:
    """A problem as reported: one line that starts with what it is about."""
    return f"{name}: {problem}"


def type_name(value: Any) -> str:
    """The value's type as JSON calls it, with an article: `got a string`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__
    )


def clip(text: str, limit: int = 80) -> str:
    """Text short enough to quote in a one-line message."""
    return text if len(text) <= limit else text[:limit] + "…"


def _as_json(value: Any) -> str:
    try:
        return ujson.dumps(value)
    except (TypeError, ValueError, OverflowError):  # a Python value from a CLI override
        return repr(value)


# --- kinds ----------------------------------------------------------------------


class Kind:
    """What one value must be. Subclasses are frozen dataclasses of their rules."""

    def expectation(self) -> str:
        """Completes the sentence "must be ..."."""
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        """The value to use (normalised), or raise Problem."""
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        """A value written as text, as this kind's type; raise Problem when it cannot be.

        Numbers are read as Python reads them (int(), float()): a source with
        a stricter syntax, like the admin API's query strings, checks it first.
        """
        return text

    def json_schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def _mismatch(self, got: str) -> Problem:
        return mismatch(self.expectation(), got)


@dataclass(frozen=True)
class Number(Kind):
    """A number within bounds; ints are fine where seconds are expected
    ("intervals may be fractional"), and the value is used as a float."""

    minimum: float | None = None
    maximum: float | None = None
    greater_than: float | None = None
    digit_groups: bool = False  # bounds written 10,000 rather than 10000

    noun: ClassVar[str] = "a number"
    json_type: ClassVar[str] = "number"
    types: ClassVar[tuple[type, ...]] = (int, float)

    def __post_init__(self) -> None:
        # OpenAPI 3.0 has one lower bound, inclusive or exclusive, not both
        if self.minimum is not None and self.greater_than is not None:
            raise ValueError("give minimum or greater_than, not both")

    def expectation(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"{self.noun} from {self._bound(self.minimum)} to {self._bound(self.maximum)}"
        bounds = [
            f"{words} {self._bound(bound)}"
            for words, bound in (
                ("greater than", self.greater_than),
                ("at least", self.minimum),
                ("at most", self.maximum),
            )
            if bound is not None
        ]
        return " ".join([self.noun, " and ".join(bounds)]) if bounds else self.noun

    def check(self, value: Any) -> Any:
        # bool is an int subclass, but JSON true is not 1
        if isinstance(value, bool) or not isinstance(value, self.types):
            raise self._mismatch(type_name(value))
        number = cast(float, value)  # self.types are int and float
        if not self._in_range(number):
            raise self._mismatch(f"{number}")
        return self._normalise(number)

    def from_text(self, text: str) -> Any:
        return _number_from_text(text, float, self)

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.json_type}
        if self.greater_than is not None:  # OpenAPI 3.0 spells an exclusive bound this way
            schema.update(minimum=self.greater_than, exclusiveMinimum=True)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema

    def _in_range(self, value: float) -> bool:
        # math.isfinite overflows on huge ints, and ints are always finite
        finite = isinstance(value, int) or math.isfinite(value)
        return finite and (
            (self.greater_than is None or value > self.greater_than)
            and (self.minimum is None or value >= self.minimum)
            and (self.maximum is None or value <= self.maximum)
        )

    def _normalise(self, value: float) -> Any:
        return float(value)

    def _bound(self, bound: float) -> str:
        return f"{bound:,}" if self.digit_groups else f"{bound}"


@dataclass(frozen=True)
class Integer(Number):
    """A whole number within bounds; 5.0 is not one."""

    noun: ClassVar[str] = "an integer"
    json_type: ClassVar[str] = "integer"
    types: ClassVar[tuple[type, ...]] = (int,)

    def from_text(self, text: str) -> int:
        return _number_from_text(text, int, self)

    def _normalise(self, value: float) -> Any:
        return value


@dataclass(frozen=True)
class String(Kind):
    """A string of bounded length, and of a pattern (the whole string must match)."""

    min_length: int = 0
    max_length: int | None = None
    pattern: str | None = None

    def expectation(self) -> str:
        if self.pattern:
            return f"a string matching {self.pattern}"
        if self.max_length is None:
            return {0: "a string", 1: "a non-empty string"}.get(
                self.min_length, f"a string of at least {self.min_length} characters"
            )
        if self.min_length:
            return f"a string of {self.min_length} to {self.max_length} characters"
        return f"a string of at most {self.max_length} characters"

    def check(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise self._mismatch(type_name(value))
        if len(value) < self.min_length or (self.max_length is not None and len(value) > self.max_length):
            raise self._mismatch(f"{len(value)} characters")
        # fullmatch: with re.match, `$` also matches before a final newline
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise self._mismatch(repr(clip(value)))
        return value

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": self.min_length}
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern:
            schema["pattern"] = self.pattern
        return schema


@dataclass(frozen=True)
class Boolean(Kind):
    def expectation(self) -> str:
        return "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._mismatch(type_name(value))
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class OneOf(Kind):
    """One of a few integers or strings; the value used is the choice as
    declared, so a string given in another case comes back spelled as declared."""

    choices: tuple[int, ...] | tuple[str, ...]
    ignore_case: bool = False  # strings only

    def expectation(self) -> str:
        listed = "one of " + ", ".join(str(choice) for choice in self.choices)
        return f"{listed} (any case)" if self.ignore_case else listed

    def check(self, value: Any) -> Any:
        for choice in self.choices:
            if self._matches(value, choice):
                return choice
        raise self._mismatch(clip(_as_json(value)))

    def from_text(self, text: str) -> Any:
        return text if self._of_strings() else _number_from_text(text, int, self)

    def json_schema(self) -> dict[str, Any]:
        if self.ignore_case:  # JSON Schema has no case-insensitive enum
            return {"type": "string"}
        return {"type": "string" if self._of_strings() else "integer", "enum": list(self.choices)}

    def _matches(self, value: Any, choice: int | str) -> bool:
        if isinstance(choice, str):
            if not isinstance(value, str):
                return False
            return value.upper() == choice.upper() if self.ignore_case else value == choice
        # bool is an int subclass, but JSON true is not 1; 1.0 is not an integer here
        return isinstance(value, int) and not isinstance(value, bool) and value == choice

    def _of_strings(self) -> bool:
        return all(isinstance(choice, str) for choice in self.choices)


@dataclass(frozen=True)
class StringList(Kind):
    """A non-empty list of non-empty strings, used as a tuple (config values are frozen)."""

    def expectation(self) -> str:
        return "a non-empty list of non-empty strings"

    def check(self, value: Any) -> tuple[str, ...]:
        non_empty_list = isinstance(value, (list, tuple)) and bool(value)
        if not non_empty_list or not all(isinstance(item, str) and item for item in value):
            raise self._mismatch(clip(_as_json(value)))
        return tuple(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}


HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})")


@dataclass(frozen=True)
class HostList(Kind):
    """A list, maybe empty, of "host:port" strings ("[::1]:3306" for IPv6), as a tuple."""

    def expectation(self) -> str:
        return 'a list of "host:port" strings'

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
            raise self._mismatch(clip(_as_json(value)))
        for item in value:
            match = HOST_PORT.fullmatch(item)
            if match is None or not 1 <= int(match.group(2)) <= 65535:
                raise self._mismatch(repr(clip(item)))
        return tuple(value)

    def json_schema(self) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string", "pattern": HOST_PORT.pattern}}


def split_host_port(text: str) -> tuple[str, int]:
    """("host", port) of a "host:port" HostList checked; IPv6 loses its brackets."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _number_from_text(text: str, read: type[float] | type[int], kind: Kind) -> Any:
    try:
        return read(text)
    except ValueError:
        raise mismatch(kind.expectation(), repr(clip(text))) from None

"""When a schedule fires: a cron expression read in an IANA time zone, or a
fixed rate, turned into fire times in UTC. Pure: no database, no clock.

Cron expressions are read by cronsim, which follows Debian cron, daylight
saving included: a fixed time (neither minute nor hour starts with `*`) that
falls in a skipped hour fires once right after the gap, and one that falls in
a repeated hour fires once (at its first occurrence); expressions whose
minute or hour field starts with `*` follow elapsed time, so `0 * * * *`
fires every 60 minutes across either transition.

cronsim computes a fixed time on the wall clock, so in the repeated hour it
can answer a time that is *before* the moment it was asked about (asked at
01:15 EST, the second pass, it answers 01:30 EDT, which has passed).
`next_after` skips such answers: a fire time is always strictly later.

A fixed rate (`interval_seconds`) fires at the whole multiples of the
interval since 1970-01-01 00:00:00 UTC: the cadence does not depend on when
the schedule was created, paused or edited, and the time zone plays no part.

Every time in and out is a naive datetime meaning UTC, as the database
stores them (DATETIME(3)); fire times are whole seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from geventq.errors import InvalidSchedule

MAX_INTERVAL = 366 * 86_400
CRON_MAX_LENGTH = 100
# Vixie cron's aliases; @reboot has no meaning for a queue and is refused.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
# How far back `last_before` looks at first, growing until it finds a fire:
# a minute-by-minute cron scans an hour, a yearly one jumps straight to years.
_LOOKBACK = (timedelta(hours=1), timedelta(days=2), timedelta(days=40), timedelta(days=400))
_FOLD_RETRIES = 4


class InvalidCadence(InvalidSchedule):
    """A schedule's cron, interval or time zone cannot be used; `field` names which."""


class NeverFires(InvalidCadence):
    """A valid expression with no fire time in the next 50 years (`0 0 30 2 *`)."""

    def __init__(self) -> None:
        super().__init__("cron", "never fires (no matching date within 50 years)")


def normalize_cron(text: str) -> str:
    """The 5-field expression a cron text stands for (aliases expanded)."""
    stripped = text.strip()
    if stripped.startswith("@"):
        expanded = ALIASES.get(stripped.lower())
        if expanded is None:
            known = ", ".join(sorted(ALIASES))
            raise InvalidCadence("cron", f"unknown alias {stripped!r} (known: {known})")
        return expanded
    return " ".join(stripped.split())


def load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise InvalidCadence(
            "timezone", f"must be an IANA time zone name such as 'Europe/Berlin', got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidCadence(
            "timezone", f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


@dataclass(frozen=True)
class Cadence:
    """The fire times of one schedule. Build it with `Cadence.of`, which checks it."""

    cron: str | None
    interval_seconds: int | None
    timezone: str = "UTC"

    @classmethod
    def of(cls, cron: str | None, interval_seconds: int | None, timezone: str = "UTC") -> Cadence:
        """Check a schedule's cadence fields; raises InvalidCadence naming the field."""
        if (cron is None) == (interval_seconds is None):
            which = "both are set" if cron is not None else "neither is set"
            raise InvalidCadence("cron", f"give exactly one of cron and interval_seconds ({which})")
        if interval_seconds is not None:
            if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int):
                raise InvalidCadence("interval_seconds", f"must be an integer, got {interval_seconds!r}")
            if not 1 <= interval_seconds <= MAX_INTERVAL:
                raise InvalidCadence(
                    "interval_seconds", f"must be from 1 to {MAX_INTERVAL:,}, got {interval_seconds}"
                )
            load_zone(timezone)
            return cls(None, interval_seconds, timezone)
        assert cron is not None
        if not isinstance(cron, str) or len(cron) > CRON_MAX_LENGTH:
            raise InvalidCadence("cron", f"must be a string of at most {CRON_MAX_LENGTH} characters")
        expression = normalize_cron(cron)
        fields = expression.split()
        if len(fields) != 5:
            raise InvalidCadence(
                "cron", f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
            )
        zone = load_zone(timezone)
        try:
            CronSim(expression, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as error:
            raise InvalidCadence("cron", f"{error} in {cron!r}") from None
        cadence = cls(cron, None, timezone)
        cadence.next_after(datetime(2000, 1, 1))  # raises NeverFires
        return cadence

    @cached_property
    def zone(self) -> ZoneInfo:
        return load_zone(self.timezone)

    @cached_property
    def expression(self) -> str:
        assert self.cron is not None
        return normalize_cron(self.cron)

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after `moment` (naive UTC)."""
        if self.interval_seconds is not None:
            step = self.interval_seconds
            elapsed = (moment - _EPOCH) // _SECOND  # whole seconds, floored
            return _EPOCH + timedelta(seconds=(elapsed // step + 1) * step)
        return self._next_cron(moment)

    def fires_after(self, moment: datetime, count: int) -> list[datetime]:
        """The next `count` fire times after `moment`."""
        return list(self._iterate(moment, count))

    def last_before(self, limit: datetime, not_before: datetime) -> datetime | None:
        """The latest fire time t with not_before <= t < limit, or None."""
        if limit <= not_before:
            return None
        if self.interval_seconds is not None:
            last = self.next_after(limit - _SECOND)
            while last >= limit:  # at most twice: `limit` may sit between whole seconds
                last -= timedelta(seconds=self.interval_seconds)
            return last if last >= not_before else None
        for lookback in (*_LOOKBACK, limit - not_before):
            start = max(not_before, limit - lookback)
            found = self._last_in(start, limit)
            if found is not None:
                return found
            if start == not_before:
                return None
        return None

    def fires_from(self, first: datetime, limit: datetime, count: int) -> list[datetime]:
        """Up to `count` fire times t with first <= t < limit, oldest first:
        `first` itself (the fire that fell due), then the cadence after it."""
        found: list[datetime] = []
        moment = first
        while moment < limit and len(found) < count:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def describe(self) -> str:
        """The cadence in words, for people: "every 5 minutes", "At 02:00 every day (Europe/Berlin)"."""
        if self.interval_seconds is not None:
            return f"every {_duration(self.interval_seconds)}"
        try:
            words = CronSim(self.expression, datetime(2000, 1, 1)).explain()
        except Exception:  # noqa: BLE001 - the explanation is a courtesy; the expression is valid
            words = self.expression
        return words if self.timezone == "UTC" else f"{words} ({self.timezone})"

    # --- cron ------------------------------------------------------------------

    def _next_cron(self, moment: datetime) -> datetime:
        after = moment.replace(tzinfo=UTC)
        start = after.astimezone(self.zone)
        try:
            candidates = CronSim(self.expression, start)
            for _ in range(_FOLD_RETRIES):
                fire = next(candidates).astimezone(UTC)
                if fire > after:
                    return fire.replace(tzinfo=None)
        except StopIteration:
            raise NeverFires() from None
        raise AssertionError(f"cron {self.expression!r} keeps answering times before {moment}")

    def _last_in(self, start: datetime, limit: datetime) -> datetime | None:
        last = None
        moment = self._next_cron(start - timedelta(microseconds=1))
        while moment < limit:
            last = moment
            moment = self._next_cron(moment)
        return last

    def _iterate(self, moment: datetime, count: int) -> Iterator[datetime]:
        for _ in range(count):
            moment = self.next_after(moment)
            yield moment


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            amount = seconds // size
            return f"{amount} {unit}s" if amount != 1 else unit
    return f"{seconds} seconds" if seconds != 1 else "second"

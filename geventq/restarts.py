"""The supervisor's restart policy, as pure logic: how long to wait before a
child that exited is started again, and when restarts have become a crash
loop that must stop everything. No processes, no clock of its own: callers
pass `now` (time.monotonic()), so the rules are tested without waiting.

Why both: a backoff alone keeps a broken deployment (a bad handler module, a
port in use) restarting forever at one attempt a minute, unnoticed; a crash
loop detector alone restarts a child that dies at once as fast as it dies.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

FIRST_DELAY = 1.0
MAX_DELAY = 60.0
# A child that lived this long was healthy: its next exit starts the backoff over.
STABLE_AFTER = MAX_DELAY
CRASH_LOOP_RESTARTS = 5  # more than this many restarts...
CRASH_LOOP_WINDOW = 60.0  # ...within this many seconds is a crash loop


@dataclass
class Backoff:
    """One child's delay before its next start: 1 s, doubling to 60 s."""

    next_delay: float = FIRST_DELAY

    def after_exit(self, lived: float) -> float:
        """The delay before starting again a child that ran for `lived` seconds."""
        if lived >= STABLE_AFTER:
            self.next_delay = FIRST_DELAY
        delay = self.next_delay
        self.next_delay = min(MAX_DELAY, delay * 2)
        return delay


@dataclass
class CrashLoop:
    """Restarts of every child together, in a sliding window."""

    limit: int = CRASH_LOOP_RESTARTS
    window: float = CRASH_LOOP_WINDOW
    _restarts: deque[float] = field(default_factory=deque)

    def restart(self, now: float) -> bool:
        """Count a restart decided at `now`; True when it makes a crash loop."""
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.window:
            self._restarts.popleft()
        return len(self._restarts) > self.limit

    def describe(self) -> str:
        return f"more than {self.limit} restarts in {self.window:g}s"


class RestartPolicy:
    """What the supervisor asks when a child exits or is found stuck."""

    def __init__(self, crash_loop: CrashLoop | None = None):
        self.crash_loop = crash_loop or CrashLoop()
        self._backoffs: dict[int, Backoff] = {}

    def restart_delay(self, slot: int, lived: float) -> float:
        """Seconds to wait before starting slot's replacement."""
        return self._backoffs.setdefault(slot, Backoff()).after_exit(lived)

    def is_crash_loop(self, now: float) -> bool:
        """Count one restart; True when restarts must stop."""
        return self.crash_loop.restart(now)

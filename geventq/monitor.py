"""gevent's monitor thread, and which task blocked the hub.

A handler that never yields (a CPU loop, a C call that holds on) stops every
greenlet of the process: scanners, outcome writes, the admin. It cannot stop
the heartbeat, which runs in a native thread (servers.py), so a busy server
is not mistaken for a dead one; but it must be visible. gevent's monitor
thread (`executor.monitor_thread`) checks every `executor.block_threshold`
seconds whether the hub switched greenlets, and emits EventLoopBlocked when
it did not. We name the task that was running then.

gevent's own check (`monitor_blocking`) formats a report of every greenlet
and its locals before it emits the event, and that formatting raises on
Bottle's thread-local request objects, so the event never came. We swap it
for a light check of our own on the same monitor thread (added and removed
with the thread's public `add_monitoring_function`), which asks gevent's
greenlet tracer whether the hub switched and emits the same EventLoopBlocked
event, with the blocked frame as its only report line.

The event arrives on the monitor thread, while the hub is still blocked. That
thread must not log: loguru's lock is a greenlet lock once gevent has patched
threading. So the subscriber only appends to a deque (thread-safe), and a
greenlet logs each block, once, as soon as the hub runs again, with how long
it lasted.

Which task: a handler runs in a pool greenlet spawned as `_run(attempt)`, so
the blocking greenlet's `args` (a documented attribute of gevent.Greenlet)
holds its Attempt, and with it the log_id. Nothing is added to the hot path.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import deque

import gevent
from gevent import events
from loguru import logger

from geventq.attempts import Attempt
from geventq.config import ExecutorConfig

REPORT_EVERY = 0.25

# (greenlet id, log_id or None, where, monotonic time seen), appended by the monitor thread.
_blocked: deque[tuple[int, str | None, str, float]] = deque()
_installed = False


def install(config: ExecutorConfig) -> bool:
    """Start the monitor thread when configured; True when it runs."""
    global _installed
    if not config.monitor_thread or _installed:
        return _installed
    gevent.config.monitor_thread = True
    gevent.config.max_blocking_time = config.block_threshold
    # Our own report names the task; gevent's would print whole stacks to stderr.
    gevent.config.print_blocking_reports = False
    events.subscribers.append(_on_event)
    with warnings.catch_warnings():
        # Without psutil gevent warns that it cannot watch memory; we do not ask it to.
        warnings.simplefilter("ignore")
        thread = gevent.get_hub().start_periodic_monitoring_thread()
    # Ours first: the thread refuses to be left with no function at all.
    thread.add_monitoring_function(_BlockingCheck(thread), config.block_threshold)
    thread.add_monitoring_function(thread.monitor_blocking, None)
    # Every hub starts a monitor of its own while this is on, and the native
    # threads that use a gevent socket (the heartbeat) get a hub: their hubs
    # sit idle by design, so they must not be watched.
    gevent.config.monitor_thread = False
    gevent.spawn(_report_loop, config.block_threshold)
    _installed = True
    logger.info(
        "hub monitor on: handlers blocking the event loop over {:g}s are logged", config.block_threshold
    )
    return True


def task_of(greenlet) -> str | None:
    """The log_id of the task a pool greenlet runs, if it runs one."""
    args = getattr(greenlet, "args", None) or ()
    attempt = args[0] if args else None
    return attempt.log_id if isinstance(attempt, Attempt) else None


class _BlockingCheck:
    """Runs on the monitor thread every block_threshold seconds."""

    def __init__(self, thread):
        self.thread = thread

    def __call__(self, hub) -> None:
        # The one private touch: the tracer gevent installed for this check.
        did_block = self.thread._greenlet_tracer.did_block_hub(hub)
        if did_block:
            events.notify(
                events.EventLoopBlocked(did_block[1], gevent.config.max_blocking_time, [_where(hub)], hub=hub)
            )


def _on_event(event) -> None:
    """On the monitor thread: note the block, log nothing."""
    if not isinstance(event, events.EventLoopBlocked):
        return
    try:
        where = event.info[0] if event.info else "?"
        _blocked.append((id(event.greenlet), task_of(event.greenlet), where, time.monotonic()))
    except Exception:  # noqa: BLE001 - never let a report kill gevent's monitor thread
        pass


def _where(hub) -> str:
    """The innermost frame of the blocked thread: what the handler was doing."""
    frame = sys._current_frames().get(getattr(hub, "thread_ident", -1))
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _report_loop(threshold: float) -> None:
    while True:
        gevent.sleep(REPORT_EVERY)
        if _blocked:
            report_blocks(threshold)


def report_blocks(threshold: float) -> int:
    """Log each block noted since the last call, once; how many blocks."""
    # The check fires once per block, one to two thresholds into it, and we
    # run again when it is over: now - first seen + threshold is a lower bound.
    now = time.monotonic()
    blocks: dict[int, tuple] = {}
    while _blocked:
        key, log_id, where, seen_at = _blocked.popleft()
        blocks.setdefault(key, (log_id, where, seen_at))
    for log_id, where, seen_at in blocks.values():
        who = f"task {log_id}" if log_id else "code outside any task"
        logger.warning(
            "{} blocked the event loop for at least {:.1f}s (block_threshold {:g}s, "
            "at {}); run CPU-bound work with ctx.run_in_thread(fn, *args)",
            who,
            now - seen_at + threshold,
            threshold,
            where,
        )
    return len(blocks)

"""A supervised executor notices when its supervisor is gone.

The supervisor passes its pid (`run --supervisor-pid`); should it die
without stopping us (kill -9, OOM killer), we would run on unsupervised and
unseen, so once a second this greenlet compares our parent with that pid and,
when it changed, asks for the normal drain, as SIGTERM would."""

from __future__ import annotations

import os
from collections.abc import Callable

import gevent
from loguru import logger

CHECK_INTERVAL = 1.0


def watch(supervisor_pid: int, request_stop: Callable[[], None]) -> gevent.Greenlet:
    return gevent.spawn(_watch_loop, supervisor_pid, request_stop)


def _watch_loop(supervisor_pid: int, request_stop: Callable[[], None]) -> None:
    # A dead parent's children are re-parented (to init or a subreaper), so
    # getppid() changes; no signal is needed, and none can be missed.
    while os.getppid() == supervisor_pid:
        gevent.sleep(CHECK_INTERVAL)
    logger.warning("the supervisor (pid {}) is gone: draining and stopping", supervisor_pid)
    request_stop()

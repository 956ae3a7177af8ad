"""`executor.pidfile`: one supervisor (or executor) per pid file.

The file is created exclusively (O_EXCL), so two starting at once cannot
both win; a file left by a process that is gone (kill -9, a reboot) is
taken over. Only the standard library: the supervisor is not monkey-patched.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from geventq.errors import GeventqError


class AlreadyRunning(GeventqError):
    """The pid file names a live process."""


@contextlib.contextmanager
def held(path: str) -> Iterator[None]:
    """Hold the pid file while the block runs ("" holds nothing)."""
    if not path:
        yield
        return
    acquire(path)
    try:
        yield
    finally:
        release(path)


def acquire(path: str) -> None:
    for _ in range(3):  # a stale file is removed and creation tried again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _remove_if_stale(path)
            continue
        except OSError as error:
            raise GeventqError(f"executor.pidfile: cannot create {path}: {error.strerror}") from error
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return
    raise AlreadyRunning(f"executor.pidfile: {path} keeps reappearing; is another geventq starting?")


def release(path: str) -> None:
    """Remove the file if it still names us (an operator may have replaced it)."""
    if read_pid(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def _remove_if_stale(path: str) -> None:
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and pid_alive(pid):
        raise AlreadyRunning(
            f"executor.pidfile: {path} names pid {pid}, which is running: another geventq "
            "supervisor is up on this host (stop it first, or give this one another pidfile)"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM  # alive, but someone else's
    return True

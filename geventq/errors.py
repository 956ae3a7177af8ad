"""geventq's exceptions. Callers never see driver exception types."""

from gevent import GreenletExit


class GeventqError(Exception):
    """Base class of every error geventq raises on purpose."""


class ConfigError(GeventqError):
    """The configuration is invalid; the message names each bad key."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class DatabaseError(GeventqError):
    """A database statement failed for a reason retrying will not fix."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached, or the connection was lost."""


class RetryableConflict(DatabaseError):
    """A deadlock, lock wait timeout or (on Galera) certification failure:
    the transaction was rolled back; someone else's write won."""


class DuplicateKey(DatabaseError):
    """An insert or update broke a unique key."""


class TableProblem(DatabaseError):
    """A (task) table that a statement named cannot be used as it is."""


class NoSuchTable(TableProblem):
    """The table, or the database it is in, does not exist."""


class NoSuchColumn(TableProblem):
    """The table lacks a column the statement names."""


class AccessDenied(TableProblem):
    """The configured user may not read or write that table or database."""


class InvalidIdentifier(GeventqError):
    """A table name failed the identifier pattern or is not a registered queue."""


class InvalidSchedule(GeventqError):
    """A schedule's field cannot be used (a cron that does not parse, an
    unknown time zone, params that are not an object); `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownQueue(GeventqError, LookupError):
    """No queue of that name in queue_configs (enqueueing addresses queues by name)."""


class InvalidTask(GeventqError, ValueError):
    """A task given to enqueue is malformed; the message starts with the field
    (`params: ...`, `tasks[3].priority: ...`)."""


class TaskNotFound(GeventqError, LookupError):
    """The queue's table has no task with that id."""


class TaskStateError(GeventqError):
    """The task is not in a status that allows the action (cancel a task that
    is not pending, retry one that is not failed or cancelled, or retry one
    whose dedupe_key another pending or running task holds)."""


class HandlerError(GeventqError):
    """A handler module failed to import, or a task type was registered twice."""


class PermanentFailure(Exception):
    """Raise from a handler to fail the task now, without spending retries
    (for example when its task_params can never be valid)."""


class LeaseLost(GreenletExit):
    """Thrown into running handlers when this server's heartbeat lease lapses:
    another server may rescue their tasks soon, so they must stop first. A
    GreenletExit, so a handler's `except Exception` cannot swallow it."""


class RateLimited(Exception):
    """Raise from a handler when the remote side says "too many requests":
    the task goes back to pending, due in `seconds`, without spending an
    attempt, and its queue starts nothing more for that long on any server."""

    def __init__(self, seconds: float, message: str = ""):
        seconds = float(seconds)
        if not seconds >= 0:  # also refuses NaN
            raise ValueError(f"RateLimited: seconds must be >= 0, got {seconds!r}")
        super().__init__(message or f"rate limited for {seconds:g}s")
        self.seconds = seconds


class TaskCancelled(GreenletExit):
    """Thrown into a running handler when its task is cancelled (admin
    task/cancel, Client.cancel). A GreenletExit, so a handler's
    `except Exception` cannot swallow it; `finally` blocks still run."""

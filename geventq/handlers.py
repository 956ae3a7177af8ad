"""Handler discovery, the registry of task types, and the JobContext a
handler receives."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from gevent import monkey

from geventq.config import Config
from geventq.db import Database
from geventq.errors import HandlerError
from geventq.producer import Producer

Handler = Callable[["JobContext"], Any]

# The task_params key of a task a schedule created: {"name", "fire_at"}
# (fire_at in UTC, "YYYY-MM-DD HH:MM:SS.mmm"); handlers see it as ctx.schedule.
SCHEDULE_KEY = "_schedule"

# Filled while handler modules are imported; `load_handlers` hands a copy to
# the executor, so reloading in tests starts from an empty registry.
_registry: dict[str, Handler] = {}


def register_task_handler(task_type: str, handler: Any) -> Any:
    """Register a function `f(ctx)` or an object with `execute(self, ctx)`."""
    if not isinstance(task_type, str) or not 1 <= len(task_type) <= 50:
        raise HandlerError(f"task type must be a string of 1 to 50 characters, got {task_type!r}")
    run = getattr(handler, "execute", handler)
    if not callable(run):
        raise HandlerError(f"handler for {task_type!r} is neither callable nor has execute(ctx)")
    if task_type in _registry:
        raise HandlerError(
            f"task type {task_type!r} is registered twice "
            f"({_describe(_registry[task_type])} and {_describe(run)}); keep one handler per type"
        )
    _registry[task_type] = run
    return handler


def task_handler(task_type: str) -> Callable[[Handler], Handler]:
    """Decorator: `@task_handler("email")` above `def send_email(ctx): ...`."""

    def decorate(fn: Handler) -> Handler:
        return register_task_handler(task_type, fn)

    return decorate


def load_handlers(paths: tuple[str, ...] | list[str]) -> dict[str, Handler]:
    """Import every `*.py` (not starting with `_`) of each path, in name order,
    and return the registry they filled."""
    _registry.clear()
    for folder in paths:
        directory = Path(folder)
        if not directory.is_dir():
            raise HandlerError(f"handler path {folder} is not a directory (handlers.paths)")
        for file in sorted(directory.glob("*.py")):
            if not file.name.startswith("_"):
                _import_handler_module(file)
    return dict(_registry)


def _import_handler_module(file: Path) -> None:
    name = f"geventq_handlers.{file.parent.name}.{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise HandlerError(f"handler module {file} cannot be loaded as Python source")
    module = importlib.util.module_from_spec(spec)
    # Handler modules may import helpers that sit beside them; appended, so a
    # handler file named like a standard module (email.py) cannot shadow it.
    if str(file.parent) not in sys.path:
        sys.path.append(str(file.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except HandlerError:
        raise
    except BaseException as error:
        sys.modules.pop(name, None)
        reason = _format_import_error(error)
        raise HandlerError(f"handler module {file} failed to import: {reason}") from error


def _format_import_error(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} (line {error.lineno})"
    return f"{type(error).__name__}: {error}"


def _describe(fn: Any) -> str:
    owner = getattr(fn, "__self__", None)
    target = type(owner) if owner is not None else fn
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


# How often ctx.cancel_requested() lets the hub run other greenlets (the
# cancel watch among them) from a handler that never yields otherwise.
CANCEL_CHECK_YIELD = 0.05
_get_thread_ident = monkey.get_original("threading", "get_ident")
_HUB_THREAD = _get_thread_ident()


def _on_hub_thread() -> bool:
    return _get_thread_ident() == _HUB_THREAD


class JobContext:
    """What a handler gets for one attempt of one task."""

    __slots__ = (
        "_cancel_check",
        "_last_yield",
        "_producer",
        "config",
        "created_at",
        "db",
        "job_param",
        "log",
        "log_id",
        "max_retries",
        "params",
        "queue_name",
        "retry_count",
        "schedule",
        "schedule_time",
        "server_id",
        "started_at",
        "table_name",
        "task_id",
        "task_type",
    )

    def __init__(
        self,
        *,
        task_id: int,
        task_type: str,
        params: Any,
        job_param: str | None,
        queue_name: str,
        table_name: str,
        retry_count: int,
        max_retries: int,
        schedule_time: Any,
        server_id: str,
        log_id: str,
        log: Any,
        config: Config | None = None,
        db: Database | None = None,
        created_at: Any = None,
        started_at: Any = None,
        cancel_check: Callable[[], bool] | None = None,
        schedule: dict[str, Any] | None = None,
        producer: Producer | None = None,
    ):
        # Plain assignments: this runs once per task on the hot path.
        self.task_id = task_id
        self.task_type = task_type
        self.params = params
        self.job_param = job_param
        self.queue_name = queue_name
        self.table_name = table_name
        self.retry_count = retry_count
        self.max_retries = max_retries
        self.schedule_time = schedule_time
        self.server_id = server_id
        self.log_id = log_id
        self.log = log
        self.config = config
        self.db = db
        self.created_at = created_at
        self.started_at = started_at  # the claim's time, database clock: the row's start_time
        self._cancel_check = cancel_check
        self._last_yield = 0.0
        # {"name", "fire_at"} for a task a schedule created (also in params
        # as "_schedule", where the task carries it), None for any other
        self.schedule = schedule
        self._producer = producer

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ..."""
        return self.retry_count + 1

    def cancel_requested(self) -> bool:
        """True once this task's cancel was requested. A loop that does not
        otherwise yield (CPU work on the hub) should call it now and then:
        it also yields to the hub at most every CANCEL_CHECK_YIELD seconds,
        and the cancel may then arrive right there as geventq.TaskCancelled.
        Safe to call from a run_in_thread function too (it never yields there)."""
        if self._cancel_check is None:
            return False
        if _on_hub_thread():
            now = time.monotonic()
            if now - self._last_yield >= CANCEL_CHECK_YIELD:
                self._last_yield = now
                gevent.sleep(0)
        return self._cancel_check()

    def enqueue(self, queue: str, task_type: str, params: Any = None, **options: Any) -> int:
        """Add a follow-up task to `queue` (any queue, by name), as
        geventq.Client.enqueue does (same options: at, delay, max_retries,
        priority, dedupe_key, concurrency_key), on the handlers' connection
        pool; the servers running that queue are woken. Its id. Committed at
        once: a retry of this attempt enqueues again unless a dedupe_key says
        otherwise."""
        if self._producer is None:
            raise RuntimeError("ctx.enqueue: this JobContext was made without a producer")
        return self._producer.enqueue(queue, task_type, params, **options)

    def run_in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run CPU-bound `fn` on gevent's native threadpool and wait for it, so
        the hub (heartbeat, other tasks, the admin) keeps running meanwhile."""
        return gevent.get_hub().threadpool.apply(fn, args, kwargs)

    def __repr__(self) -> str:
        return f"<JobContext {self.log_id} type={self.task_type} attempt={self.attempt}>"

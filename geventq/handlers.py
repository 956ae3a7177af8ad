"""Handler discovery, the registry of task types, and the JobContext a
handler receives."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from geventq.config import Config
from geventq.db import Database
from geventq.errors import HandlerError
from geventq.producer import Producer

Handler = Callable[["JobContext"], Any]

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


class JobContext:
    """What a handler gets for one attempt of one task."""

    __slots__ = (
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
        "schedule_time",
        "server_id",
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
        self._producer = producer

    @property
    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ..."""
        return self.retry_count + 1

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

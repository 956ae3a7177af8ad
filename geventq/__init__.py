"""geventq: a database-driven distributed task queue on gevent and MySQL.

The public names are imported on first use, not with the package: the
`geventq` command must monkey-patch before anything imports sockets, locks or
PyMySQL, and `import geventq` itself is the first thing it runs."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Client": "geventq.client",
    "JobContext": "geventq.handlers",
    "PermanentFailure": "geventq.errors",
    "RateLimited": "geventq.errors",
    "Status": "geventq.attempts",
    "TaskCancelled": "geventq.errors",
    "register_task_handler": "geventq.handlers",
    "task_handler": "geventq.handlers",
}

__all__ = [
    "Client",
    "JobContext",
    "PermanentFailure",
    "RateLimited",
    "Status",
    "TaskCancelled",
    "__version__",
    "register_task_handler",
    "task_handler",
]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time __getattr__ imports on demand
    from geventq.attempts import Status
    from geventq.client import Client
    from geventq.errors import PermanentFailure, RateLimited, TaskCancelled
    from geventq.handlers import JobContext, register_task_handler, task_handler


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geventq' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value

"""geventq: a database-driven distributed task queue on gevent and MySQL."""

from geventq.attempts import Status
from geventq.errors import PermanentFailure, RateLimited, TaskCancelled
from geventq.handlers import JobContext, register_task_handler, task_handler

__version__ = "0.1.0"

__all__ = [
    "JobContext",
    "PermanentFailure",
    "RateLimited",
    "Status",
    "TaskCancelled",
    "__version__",
    "register_task_handler",
    "task_handler",
]

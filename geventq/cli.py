"""The `geventq` command (and `python -m geventq`): argument parsing and
dispatch. `run` (the default) starts an executor; the others read or change
the database directly (geventq.commands), so they work with no executor up.

argparse subparsers, not click or typer: the standard library already
covers subcommands, shared options and help, it adds no dependency to a
package that is installed on servers, and it imports in milliseconds.

Exit codes (README, Command line): 0 done; 1 the database could not be
reached or read (or has no schedules table, for `schedules`); 2 bad usage or
configuration (an unknown option, queue or value); 3 no such task; 4 a task
is not in a status that allows the action.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from collections.abc import Sequence

from geventq.errors import (
    ConfigError,
    DatabaseError,
    GeventqError,
    InvalidIdentifier,
    InvalidTask,
    TaskNotFound,
    TaskStateError,
    UnknownQueue,
)

OK, DATABASE_FAILED, USAGE, NOT_FOUND, WRONG_STATUS = 0, 1, 2, 3, 4
COMMANDS = ("run", "status", "queues", "tasks", "schedules")
# Options that take a value, so normalise() does not take that value for a command.
VALUED = frozenset(
    {"--config", "--server-id", "--admin-port", "--handlers", "--processes", "--pidfile", "--supervisor-pid"}
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geventq",
        description="geventq: run tasks from MySQL task tables, and look after them.",
        epilog="Exit codes: 0 done, 1 database unreachable or unreadable (or no schedules table), "
        "2 bad usage or configuration, "
        "3 no such task, 4 a task is not in a status that allows the action.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: $GEVENTQ_CONFIG or ./config.json)")
    reading = argparse.ArgumentParser(add_help=False, parents=[common])
    reading.add_argument("--json", action="store_true", help="print JSON instead of a table")

    run = commands.add_parser("run", parents=[common], help="run an executor (the default command)")
    run.add_argument("--server-id", help="overrides executor.server_id")
    run.add_argument("--admin-port", type=int, help="overrides admin.port")
    run.add_argument(
        "--handlers",
        action="append",
        metavar="DIR",
        help="overrides handlers.paths (repeat for several folders)",
    )
    run.add_argument(
        "--processes", type=int, metavar="N", help="overrides executor.processes (2+ runs a supervisor)"
    )
    run.add_argument("--pidfile", metavar="PATH", help="overrides executor.pidfile")
    # Given by the supervisor to its children (geventq.parent).
    run.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    commands.add_parser(
        "status", parents=[reading], help="queues with their task counts, and servers (no executor needed)"
    )
    commands.add_parser("queues", parents=[reading], help="the queues with their task counts")
    commands.add_parser("schedules", parents=[reading], help="the recurring schedules, where they exist")
    _add_task_commands(
        commands.add_parser("tasks", help="list, show, enqueue, retry or cancel tasks"), reading
    )
    return parser


def _add_task_commands(tasks: argparse.ArgumentParser, reading: argparse.ArgumentParser) -> None:
    actions = tasks.add_subparsers(dest="action", metavar="ACTION", required=True)
    queue = argparse.ArgumentParser(add_help=False, parents=[reading])
    queue.add_argument("queue", help="the queue's name (queue_configs.queue_name)")

    listing = actions.add_parser("list", parents=[queue], help="tasks of a queue, newest first")
    listing.add_argument("--status", choices=STATUS_CHOICES, help="only tasks in this status")
    listing.add_argument("--type", dest="task_type", help="only tasks of this task_type")
    listing.add_argument("--limit", type=int, default=50, help="page size, 1-1000 (default 50)")
    listing.add_argument("--offset", type=int, default=0, help="next_offset of the previous page")

    get = actions.add_parser("get", parents=[queue], help="one task, every column")
    get.add_argument("id", type=int)

    cancel = actions.add_parser("cancel", parents=[queue], help="pending tasks to cancelled")
    cancel.add_argument("ids", type=int, nargs="+", metavar="ID")

    retry = actions.add_parser(
        "retry",
        parents=[reading],
        help="failed or cancelled tasks back to pending: by id, or every one in a status (--status)",
    )
    retry.add_argument("queue", nargs="?", help="the queue's name (or --queue)")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID")
    retry.add_argument("--queue", dest="queue_option", metavar="QUEUE", help="the queue's name")
    retry.add_argument(
        "--status", choices=("failed", "cancelled"), help="retry every task of the queue in this status"
    )
    retry.add_argument("--type", dest="task_type", help="with --status: only tasks of this task_type")

    enqueue = actions.add_parser("enqueue", parents=[queue], help="add a task")
    enqueue.add_argument("task_type")
    enqueue.add_argument("params", nargs="?", help="task_params as JSON text (default {}); - reads stdin")
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--at", help="due at 'YYYY-MM-DD HH:MM:SS' (database time zone) or ISO-8601 with offset"
    )
    when.add_argument("--delay", type=float, help="due in this many seconds (database clock)")
    enqueue.add_argument("--max-retries", type=int)
    enqueue.add_argument("--priority", type=int, help="smaller runs first (needs the priority column)")
    enqueue.add_argument(
        "--dedupe-key", help="one pending or running task per key (needs the dedupe_key column)"
    )
    enqueue.add_argument("--concurrency-key", help="needs the concurrency_key column")


STATUS_CHOICES = ("pending", "running", "done", "failed", "cancelled")


def normalise(argv: Sequence[str]) -> list[str]:
    """`run` when no command is named (`geventq --config x.json` runs an
    executor, as `python -m geventq` always has); options written before the
    command move behind it (`geventq --config x.json tasks list q`)."""
    args = list(argv)
    index = 0
    while index < len(args) and args[index].startswith("-"):
        index += 2 if args[index] in VALUED else 1
    if index >= len(args):  # no command named
        return args if {"-h", "--help"} & set(args) else ["run", *args]
    if args[index] in COMMANDS and index > 0:
        return [*args[index:], *args[:index]]
    return args


def overrides_from(args: argparse.Namespace) -> dict:
    # --handlers is relative to where the command was typed, unlike paths in
    # the config file, which are relative to the file.
    handlers = [os.path.abspath(path) for path in args.handlers] if args.handlers else None
    return {
        "executor.server_id": args.server_id,
        "admin.port": args.admin_port,
        "handlers.paths": handlers,
        "executor.processes": args.processes,
        "executor.pidfile": args.pidfile,
    }


def runs_supervisor(argv: Sequence[str]) -> bool:
    """Whether `geventq <argv>` runs the supervisor of several executors
    (geventq.supervisor), decided before gevent patches anything: only
    argparse and, without --processes, the config file are read. A command
    line or file that does not parse is left to the executor's path, which
    reports it."""
    try:
        # quietly: a usage error or --help is printed once, by the executor's path
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(normalise(argv))
    except SystemExit:
        return False
    if args.command != "run" or args.supervisor_pid:
        return False
    if args.processes is not None:
        return args.processes >= 2
    from geventq import config

    try:
        return config.load(args.config, overrides_from(args)).executor.processes >= 2
    except ConfigError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(normalise(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "run":
            return _run_executor(args)
        from geventq import commands

        return commands.dispatch(args)
    except (ConfigError, UnknownQueue, InvalidTask, InvalidIdentifier) as error:
        print(f"geventq: {error}", file=sys.stderr)
        return USAGE
    except TaskNotFound as error:
        print(f"geventq: {error}", file=sys.stderr)
        return NOT_FOUND
    except TaskStateError as error:
        print(f"geventq: {error}", file=sys.stderr)
        return WRONG_STATUS
    except DatabaseError as error:
        print(f"geventq: {error}", file=sys.stderr)
        return DATABASE_FAILED


def _run_executor(args: argparse.Namespace) -> int:
    from geventq import config

    try:
        cfg = config.load(args.config, overrides_from(args))
        from geventq import parent, pidfile
        from geventq.executor import Executor

        executor = Executor(cfg)
        if args.supervisor_pid:
            parent.watch(args.supervisor_pid, executor.request_stop)
        with pidfile.held(cfg.executor.pidfile):
            return executor.run()
    except GeventqError as error:
        # Start-up refusals (config, database, handlers, port) exit 2, as always.
        print(f"geventq: {error}", file=sys.stderr)
        return USAGE

"""Command line: `python -m geventq [run|status] [options]`."""

from __future__ import annotations

import argparse
import os
import sys

from geventq.errors import GeventqError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geventq", description="geventq: run tasks from MySQL task tables."
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "status"],
        help="run: run the executor (default); status: print the queues and servers "
        "from the database (needs no running executor)",
    )
    parser.add_argument("--config", help="config file (default: $GEVENTQ_CONFIG or config.json)")
    parser.add_argument("--server-id", help="overrides executor.server_id")
    parser.add_argument("--admin-port", type=int, help="overrides admin.port")
    parser.add_argument(
        "--handlers",
        action="append",
        metavar="DIR",
        help="overrides handlers.paths (repeat for several folders)",
    )
    return parser


def overrides_from(args: argparse.Namespace) -> dict:
    # --handlers is relative to where the command was typed, unlike paths in
    # the config file, which are relative to the file.
    handlers = [os.path.abspath(path) for path in args.handlers] if args.handlers else None
    return {"executor.server_id": args.server_id, "admin.port": args.admin_port, "handlers.paths": handlers}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from geventq import config

    try:
        cfg = config.load(args.config, overrides_from(args))
        if args.command == "status":
            from geventq import status

            return status.run(cfg)
        from geventq.executor import Executor

        return Executor(cfg).run()
    except GeventqError as error:
        print(f"geventq: {error}", file=sys.stderr)
        return 2

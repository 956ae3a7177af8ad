"""`python -m geventq` and the `geventq` command: patch first, import the rest after.

`run --processes N` (or executor.processes >= 2) is the exception: its
supervisor runs no greenlets and must not be patched (it waits on child
processes and signals with the standard library), so that one decision is
taken before patching, with argparse and the config file only."""

import sys

from geventq.cli import runs_supervisor


def main() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    if runs_supervisor(sys.argv[1:]):
        from geventq.supervisor import main as supervise

        return supervise(sys.argv[1:])
    from gevent import monkey

    # Before any module that uses sockets, locks or time is imported, so
    # PyMySQL, loguru and Bottle cooperate with the hub. `import geventq` (run
    # before this module by both entry points) imports nothing: see __init__.py.
    monkey.patch_all()
    from geventq.cli import main as run_cli

    return run_cli()


if __name__ == "__main__":
    sys.exit(main())

"""`python -m geventq` and the `geventq` command: patch first, import the rest after."""

from gevent import monkey

# Before any other import, so sockets, locks and time in every module
# (PyMySQL, loguru, Bottle) cooperate with the hub. `import geventq` (run
# before this module by both entry points) imports nothing: see __init__.py.
monkey.patch_all()

import sys  # noqa: E402


def main() -> int:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    from geventq.cli import main as run_cli

    return run_cli()


if __name__ == "__main__":
    sys.exit(main())

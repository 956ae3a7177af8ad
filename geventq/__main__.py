"""`python -m geventq`: patch first, import the rest after."""

from gevent import monkey

# Before any other import, so sockets, locks and time in every module
# (PyMySQL, loguru, Bottle) cooperate with the hub.
monkey.patch_all()

import sys  # noqa: E402

from geventq.cli import main  # noqa: E402

sys.exit(main())

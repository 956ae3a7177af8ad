"""The benchmark's own task types.

bench_noop   does nothing: what is measured is the queue, not the handler.
bench_sleep  sleeps params.seconds (default 0.2) cooperatively, like a handler
             waiting on I/O.
"""

import gevent

from geventq import task_handler


@task_handler("bench_noop")
def bench_noop(ctx):
    pass


@task_handler("bench_sleep")
def bench_sleep(ctx):
    gevent.sleep(float(ctx.params.get("seconds", 0.2)))

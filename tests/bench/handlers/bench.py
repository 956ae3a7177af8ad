"""The benchmark's own task types.

bench_noop   does nothing: what is measured is the queue, not the handler.
bench_sleep  sleeps params.seconds (default 0.2) cooperatively, like a handler
             waiting on I/O.
bench_cpu    a fixed amount of pure-Python work (params.n loop steps, default
             60,000: about 2 ms here) that never yields, like a CPU-bound handler.
"""

import gevent

from geventq import task_handler


@task_handler("bench_noop")
def bench_noop(ctx):
    pass


@task_handler("bench_sleep")
def bench_sleep(ctx):
    gevent.sleep(float(ctx.params.get("seconds", 0.2)))


@task_handler("bench_cpu")
def bench_cpu(ctx):
    # A fixed amount of work, not a fixed time: more processes finish more of it.
    total = 0
    for step in range(int(ctx.params.get("n", 60_000))):
        total += step * step % 7
    return total

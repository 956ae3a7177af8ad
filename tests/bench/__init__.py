"""`python -m tests.bench`: the benchmark of issue #4.

It creates its own database, runs each workload against real `python -m
geventq` processes, reads every figure from the database clock, and runs a
minimal gevent + PyMySQL loop (the ceiling) in the same invocation so each
figure is also a ratio to it. Nothing here is imported by the executor.
"""

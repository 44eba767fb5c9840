"""Drain rate and worker CPU per mail by Celery pool kind (issue 20's pool choice).

    python -m bench.pools [--relay-ms 0] [--mails 600] [--runs 3]
                          [--only 'Procfile|gevent']

Not part of `make bench`. Each run queues a backlog of welcome mails with
nothing consuming it, starts the pool's worker processes on it and times from
their start to the relay's last 250, as the throughput figure does. Worker CPU
is user+system time of the worker processes and their pool children, less
their lowest CPU of two starts on an empty queue. Pools are interleaved, one
warm-up run each first; every run checks that each mail reached the relay
exactly once. PostgreSQL when BENCH_DATABASE_URL names a server, else SQLite.
gevent (requirements-dev.in): Celery monkey-patches the worker at start, so
the lifeline's thread and the SMTP pool's locks run as greenlets, and
psycopg waits cooperatively once it finds the patched `select`.
"""

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.batching import queue_backlog, worker_argv
from bench.harness import RelayLog
from bench.processes import Database, Stack, process_cpu_seconds
from tests.support import wait_until

# label: (pool, concurrency per process, worker processes[, prefetch multiplier])
POOLS = {
    "threads 4, 2 processes, prefetch x16 (the Procfile)": ("threads", 4, 2, 16),
    "threads 16, 2 processes, prefetch x2 (the Procfile before)": (
        "threads",
        16,
        2,
        2,
    ),
    "threads 32, 1 process": ("threads", 32, 1),
    "prefork 2 (the cores), 1 process": ("prefork", 2, 1),
    "prefork 8, 1 process": ("prefork", 8, 1),
    "gevent 16, 2 processes": ("gevent", 16, 2),
    "gevent 32, 2 processes": ("gevent", 32, 2),
}


def start(stack: Stack, pool: str, concurrency: int, processes: int, *rest, serial):
    """The pool's worker processes, each with its own node name; their names."""
    prefetch = rest[0] if rest else 2
    names = []
    for index in range(processes):
        argv = worker_argv(concurrency=concurrency, prefetch=prefetch)
        argv[argv.index("--pool") + 1] = pool
        name = f"pool{serial}-{index}"
        argv[argv.index("--hostname") + 1] = f"{name}@%h"
        stack.spawn(name, argv, stack.env())
        names.append(name)
    return names


def cpu_of(stack: Stack, names: list[str]) -> float:
    return sum(process_cpu_seconds(stack.processes[n].pid) for n in names)


def idle_cpu(stack: Stack, spec: tuple, serial: int) -> float:
    names = start(stack, *spec, serial=serial)
    wait_until(
        lambda: all(" ready." in stack.log(n) for n in names), timeout=60, what="ready"
    )
    time.sleep(1.0)
    used = cpu_of(stack, names)
    for name in names:
        stack.stop(name)
    return used


def one_run(stack, relay, spec: tuple, *, mails: int, serial: int) -> tuple:
    emails = queue_backlog(stack, mails, f"pool{serial}x")
    started = time.monotonic()
    names = start(stack, *spec, serial=serial)
    relay.wait_for(emails, timeout=600)
    elapsed, used = time.monotonic() - started, cpu_of(stack, names)
    for name in names:
        stack.stop(name)
    copies = relay.copies(emails)
    if set(copies.values()) != {1}:
        raise RuntimeError(f"run {serial}: not once each: {copies.most_common(3)}")
    return mails / elapsed, used


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--relay-ms", type=int, default=0, help="the relay's delay")
    parser.add_argument("--only", default="", help="pools whose label matches (re)")
    args = parser.parse_args()
    pools = {k: v for k, v in POOLS.items() if re.search(args.only, k)}
    directory = Path(tempfile.mkdtemp(prefix="bench-pools-"))
    server = os.environ.get("BENCH_DATABASE_URL") or None
    database = Database(server_url=server, directory=directory).create()
    stack = Stack(directory=directory, database=database)
    serial = 0
    try:
        stack.start_redis()
        stack.start_relay(delay_ms=args.relay_ms)
        stack.migrate()
        relay = RelayLog(stack.relay_log)
        idle = {}
        for label, spec in pools.items():
            idle[label] = min(idle_cpu(stack, spec, serial := serial + 1) for _ in "ab")
        found = {label: [] for label in pools}
        for warm in [True] + [False] * args.runs:
            for label, spec in pools.items():
                serial += 1
                mails = max(20, args.mails // 6) if warm else args.mails
                rate, used = one_run(stack, relay, spec, mails=mails, serial=serial)
                if not warm:
                    found[label].append((rate, (used - idle[label]) * 1000 / mails))
        print(
            f"\n{args.mails} mails per run, {args.runs} interleaved runs, "
            f"{args.relay_ms} ms relay, {database.server_version()}, "
            f"{os.cpu_count()} cores\n"
        )
        print("| pool | mails/s | worker CPU ms/mail |")
        print("| --- | --- | --- |")
        for label, runs in found.items():
            rates, cpus = [r for r, _ in runs], [c for _, c in runs]
            print(f"| {label} | {_shown(rates, '{:.1f}')} | {_shown(cpus, '{:.2f}')} |")
    finally:
        stack.stop_all()
        database.drop()


def _shown(values: list[float], form: str) -> str:
    low, high = form.format(min(values)), form.format(max(values))
    return f"{form.format(statistics.median(values))} ({low}-{high})"


if __name__ == "__main__":
    main()

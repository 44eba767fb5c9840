"""Worker CPU per mail: batched sends against the per-mail path (issue 20 spike).

    python -m bench.batching [--mails 2000] [--runs 3] [--batch-size 32]

Not part of `make bench`. Each run queues a backlog of welcome mails with
nothing consuming it (bench/peers/driver.py, one transaction per mail),
then starts one worker on it and times from its start to the relay's last
250 (a 0 ms relay, bench/relay.py; `--relay-ms` for a slower one). Worker
CPU is user+system time of the worker process at that moment, less its
median CPU when started on an empty queue (measured to the same point after
`ready`). Modes are interleaved, one warm-up run each first; every run
checks that each mail reached the relay exactly once. PostgreSQL when
BENCH_DATABASE_URL names a server, else SQLite.

With `--rate 50` it measures latency instead: each worker started on an
empty queue, mails queued at that steady rate, commit-to-250 per mail.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import RelayLog
from bench.processes import Database, Stack, process_cpu_seconds, procfile_command
from bench.stats import percentile
from tests.support import wait_until

IDLE_SETTLE = 1.0  # seconds after `ready` at which an idle worker's CPU is read


def worker_argv(*, concurrency: int, prefetch: int) -> list[str]:
    """The Procfile's worker with this pool size and prefetch multiplier."""
    argv = procfile_command("worker")
    argv[argv.index("--concurrency") + 1] = str(concurrency)
    argv[argv.index("--prefetch-multiplier") + 1] = str(prefetch)
    argv[argv.index("--hostname") + 1] = "bench@%h"
    return [sys.executable, "-m", *argv]


def modes(batch_size: int, threads: list[int], linger: str | None) -> dict:
    """Label to (worker argv, environment): the per-mail path, then batched."""
    procfile = procfile_command("worker")
    concurrency = int(procfile[procfile.index("--concurrency") + 1])
    prefetch = int(procfile[procfile.index("--prefetch-multiplier") + 1])
    chosen = {
        f"per-mail, Procfile (threads {concurrency}, prefetch x{prefetch})": (
            worker_argv(concurrency=concurrency, prefetch=prefetch),
            {},
        ),
        f"per-mail, threads 4, prefetch x{batch_size}": (
            worker_argv(concurrency=4, prefetch=batch_size),
            {},
        ),
    }
    for count in threads:
        # Each thread may hold a full batch while the next one fills.
        multiplier = batch_size * 2 // count + batch_size
        chosen[f"batched {batch_size}, threads {count}, prefetch x{multiplier}"] = (
            worker_argv(concurrency=count, prefetch=multiplier),
            {"MAILER_BATCH_SIZE": str(batch_size)}
            | ({"MAILER_BATCH_LINGER_MS": linger} if linger is not None else {}),
        )
    return chosen


def start_worker(stack: Stack, argv: list[str], env: dict[str, str], name: str):
    process = stack.spawn(name, argv, stack.env(**env))
    wait_until(
        lambda: stack.alive(name) or " ready." in stack.log(name),
        timeout=60,
        what=name,
    )
    return process


def idle_cpu(stack: Stack, argv, env, serial: int) -> float:
    name = f"idle-{serial}"
    process = start_worker(stack, argv, env, name)
    time.sleep(IDLE_SETTLE)
    cpu = process_cpu_seconds(process.pid)
    stack.stop(name)
    return cpu


def queue_backlog(stack: Stack, count: int, prefix: str) -> list[str]:
    driver = [sys.executable, "-m", "bench.peers.driver", "--system", "project"]
    driver += ["--count", str(count), "--prefix", prefix]
    out = subprocess.run(
        driver, env=stack.env(), check=True, capture_output=True, text=True
    ).stdout
    return list(json.loads(out)["began"])


def one_run(stack, relay, argv, env, *, mails: int, serial: int) -> dict:
    emails = queue_backlog(stack, mails, f"b{serial}x")
    name = f"worker-{serial}"
    started = time.monotonic()
    process = stack.spawn(name, argv, stack.env(**env))
    relay.wait_for(emails, timeout=600)
    elapsed = time.monotonic() - started
    cpu = process_cpu_seconds(process.pid)
    stack.stop(name)
    copies = relay.copies(emails)
    if set(copies.values()) != {1}:
        raise RuntimeError(f"run {serial}: not once each: {copies.most_common(3)}")
    log = stack.log(name)
    batches = [int(n) for n in _batch_sizes(log)]
    return {"cpu": cpu, "elapsed": elapsed, "batches": batches}


def latency_run(stack, relay, argv, env, *, mails: int, rate: float, serial: int):
    name = f"worker-{serial}"
    start_worker(stack, argv, env, name)
    time.sleep(IDLE_SETTLE)
    driver = [sys.executable, "-m", "bench.peers.driver", "--system", "project"]
    driver += ["--count", str(mails), "--prefix", f"l{serial}x", "--rate", str(rate)]
    out = subprocess.run(
        driver, env=stack.env(), check=True, capture_output=True, text=True
    ).stdout
    began = json.loads(out)["began"]
    accepted = relay.wait_for(list(began), timeout=120)
    batches = [int(n) for n in _batch_sizes(stack.log(name))]
    stack.stop(name)
    return [accepted[e] - began[e] for e in began], batches


def _batch_sizes(log: str) -> list[str]:
    return re.findall(r"batch of (\d+) send tasks", log)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rate", type=float, help="latency at this steady rate")
    parser.add_argument("--threads", default="4", help="batched workers' threads")
    parser.add_argument("--linger", help="MAILER_BATCH_LINGER_MS of batched workers")
    parser.add_argument("--relay-ms", type=int, default=0, help="the relay's delay")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    server = os.environ.get("BENCH_DATABASE_URL") or None
    database = Database(server_url=server, directory=directory).create()
    stack = Stack(directory=directory, database=database)
    threads = [int(n) for n in args.threads.split(",")]
    chosen = modes(args.batch_size, threads, args.linger)
    serial = 0
    try:
        stack.start_redis()
        stack.start_relay(delay_ms=args.relay_ms)
        stack.migrate()
        relay = RelayLog(stack.relay_log)
        if args.rate:
            latencies(stack, relay, chosen, args)
            return
        idle = {}
        for label, (argv, env) in chosen.items():
            samples = []
            for _ in range(3):
                serial += 1
                samples.append(idle_cpu(stack, argv, env, serial))
            idle[label] = statistics.median(samples)
        runs = {label: [] for label in chosen}
        for warm in [True] + [False] * args.runs:
            for label, (argv, env) in chosen.items():
                serial += 1
                result = one_run(
                    stack, relay, argv, env, mails=args.mails, serial=serial
                )
                if not warm:
                    runs[label].append(result)
                print(
                    f"{'warm-up' if warm else 'run'} {label}: "
                    f"{result['elapsed']:.1f} s, cpu {result['cpu']:.2f} s",
                    flush=True,
                )
        report(runs, idle, args, database)
    finally:
        stack.stop_all()
        database.drop()


def latencies(stack, relay, chosen, args) -> None:
    serial = 100
    found = {label: [] for label in chosen}
    batches = {label: [] for label in chosen}
    for warm in [True] + [False] * args.runs:
        for label, (argv, env) in chosen.items():
            serial += 1
            values, sizes = latency_run(
                stack, relay, argv, env, mails=args.mails, rate=args.rate, serial=serial
            )
            if not warm:
                found[label].append(values)
                batches[label] += sizes
    print(f"\n{args.mails} mails at {args.rate:g}/s per run, {args.runs} runs")
    print("| worker | commit-to-250 p50 ms | p99 ms | batch sizes |")
    print("| --- | --- | --- | --- |")
    for label, runs in found.items():
        p50 = [percentile(v, 50) * 1000 for v in runs]
        p99 = [percentile(v, 99) * 1000 for v in runs]
        sizes = batches[label]
        shown = (
            f"{sizes.count(1)} of {len(sizes)} alone, max {max(sizes)}"
            if sizes
            else "-"
        )
        low, high = _spread(p50, "{:.1f}"), _spread(p99, "{:.1f}")
        print(f"| {label} | {low} | {high} | {shown} |")


def report(runs, idle, args, database) -> None:
    print(
        f"\n{args.mails} mails per run, {args.runs} interleaved runs, "
        f"{args.relay_ms} ms relay, "
        f"{database.server_version()}, {os.cpu_count()} cores\n"
    )
    print("| worker | mails/s | worker CPU ms/mail | idle start-up CPU s | batches |")
    print("| --- | --- | --- | --- | --- |")
    for label, results in runs.items():
        rates = [args.mails / r["elapsed"] for r in results]
        per_mail = [(r["cpu"] - idle[label]) * 1000 / args.mails for r in results]
        sizes = [n for r in results for n in r["batches"]]
        shown = (
            f"median size {statistics.median(sizes):.0f}, max {max(sizes)}"
            if sizes
            else "-"
        )
        print(
            f"| {label} | {_spread(rates, '{:.0f}')} | {_spread(per_mail)} "
            f"| {idle[label]:.2f} | {shown} |"
        )


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    low, high = min(values), max(values)
    median = statistics.median(values)
    return f"{fmt.format(median)} ({fmt.format(low)}-{fmt.format(high)})"


if __name__ == "__main__":
    main()

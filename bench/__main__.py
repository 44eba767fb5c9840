"""`python -m bench [--quick] [--only a,b]`: run figures, write docs/BENCHMARKS.md."""

import argparse
import importlib
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.harness import Target
from bench.processes import ROOT, Database, Stack

FAILURES = ROOT / "var" / "bench-failures.log"
FIGURES = [
    "hashing",
    "mail_path",
    "registration",
    "latency",
    "sustained",
    "throughput",
    "stages",
    "faults",
    "resend",
    "results",
    "sweep",
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, fewer runs")
    parser.add_argument("--output", type=Path, help="default docs/BENCHMARKS.md")
    parser.add_argument("--only", help=f"comma list of figures ({','.join(FIGURES)})")
    args = parser.parse_args()
    quick_out = ROOT / "var" / "BENCHMARKS-quick.md"
    output = args.output or (quick_out if args.quick else ROOT / "docs/BENCHMARKS.md")
    command = "make bench" + (" BENCH_QUICK=1" if args.quick else "")
    if args.only or args.output:
        command = "python -m bench " + shlex.join(sys.argv[1:])
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        server_url = None
    if server_url:
        command = f"DATABASE_URL={server_url} {command}"
    directory = Path(tempfile.mkdtemp(prefix="bench-"))
    database = Database(server_url=server_url, directory=directory)
    stack = Stack(directory=directory, database=database)
    os.environ.update(stack.env())
    load_at_start, started = os.getloadavg(), time.time()
    database.create()
    sections = {}
    try:
        import django

        stack.migrate()
        django.setup()
        stack.start_redis()
        stack.start_relay(delay_ms=0)
        from bench import report
        from bench.harness import Bench

        bench = Bench(stack=stack, quick=args.quick)
        for name in args.only.split(",") if args.only else FIGURES:
            module = importlib.import_module(f"bench.fig_{name}")
            clock = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                sections[name] = module.section(module.run(bench))
            except Exception as exc:  # noqa: BLE001 - the page says which failed
                sections[name] = failed_section(name, exc, FAILURES)
                print(f"   {name} failed: traceback in {FAILURES}", flush=True)
            print(f"   done in {time.monotonic() - clock:.0f} s", flush=True)
            shared = ("redis", "relay", "web", "worker")  # what figures share
            for proc in [p for p in stack.processes if not p.startswith(shared)]:
                print(f"   {name} left {proc} running: stopped", flush=True)
                stack.stop(proc)
    finally:
        stack.stop_all()
        from django.db import connections

        connections.close_all()
        database.drop()
    report.write(
        output,
        sections=sections,
        command=command,
        quick=args.quick,
        database=database,
        load=(load_at_start, os.getloadavg()),
        elapsed=time.time() - started,
    )
    print(f"wrote {output} in {time.time() - started:.0f} s (logs in {directory})")
    failed = [name for name, (_, targets) in sections.items() if failed_figure(targets)]
    if failed:
        print(f"failed figures: {', '.join(failed)} (tracebacks in {FAILURES})")
    sys.exit(exit_status(sections))


def failed_section(name: str, exc: BaseException, log: Path) -> tuple[str, list]:
    """Append the traceback to `log`; return one line for the page and a
    target that says the figure failed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"== {name} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.write("".join(traceback.format_exception(exc)) + "\n")
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [""]
    what = lines[0][:160] + (f" ... {lines[-1][:160]}" if len(lines) > 1 else "")
    line = f"{type(exc).__name__}: {what}".rstrip(": ")
    text = f"## {name}: failed\n\nThe {name} figure failed: {line}.\n"
    target = Target(f"The {name} figure runs", f"failed: {line}", False, True)
    return text, [target]


def failed_figure(targets: list) -> bool:
    return any(t.figure_failed for t in targets)


def exit_status(sections: dict) -> int:
    """Return 1 when any figure failed, 0 otherwise (unmet targets are data)."""
    return int(any(failed_figure(targets) for _, targets in sections.values()))


if __name__ == "__main__":
    main()

"""`python -m bench [--quick]`: run every figure and write docs/BENCHMARKS.md."""

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.processes import ROOT, Database, Stack
from bench.report import write_report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small counts, two runs per figure"
    )
    parser.add_argument("--output", type=Path, help="default docs/BENCHMARKS.md")
    parser.add_argument(
        "--only", help="comma list of figures to run (hashing,2,1,6,3,5,4)"
    )
    args = parser.parse_args()
    output = args.output or (
        ROOT / "var" / "BENCHMARKS-quick.md"
        if args.quick
        else ROOT / "docs/BENCHMARKS.md"
    )
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
    load_at_start = os.getloadavg()
    started = time.time()
    database.create()
    try:
        from bench.figures import Figures

        figures = Figures(stack=stack, quick=args.quick)
        figures.setup()
        wanted = args.only.split(",") if args.only else None
        results = figures.run_all(wanted)
    finally:
        stack.stop_all()
        from django.db import connections

        connections.close_all()
        database.drop()
    write_report(
        output,
        results=results,
        command=command,
        quick=args.quick,
        database=database,
        load=(load_at_start, os.getloadavg()),
        elapsed=time.time() - started,
    )
    print(f"wrote {output} in {time.time() - started:.0f} s (logs in {directory})")


if __name__ == "__main__":
    main()

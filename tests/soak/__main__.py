"""`python -m tests.soak`: one fault soak, its report written to docs/SOAK.md.

Exits 1 when a mail is missing or duplicated outside the documented window,
2 when the soak itself could not run. See the README, "Fault soak".
"""

import argparse
import dataclasses
import signal
import sys
from pathlib import Path

from tests.soak.config import FAST_OVERRIDES, config_from_environment
from tests.soak.report import write_report
from tests.soak.run import print_summary, run_soak, say


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = config_from_environment()
    changes: dict = {}
    if args.minutes is not None:
        changes["minutes"] = args.minutes
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.report:
        changes["report_path"] = Path(args.report)
    if args.fast:
        changes["overrides"] = {**FAST_OVERRIDES, **config.overrides}
    config = dataclasses.replace(config, **changes)
    _stop_on_signals()
    outcome = run_soak(config)
    write_report(config.report_path, outcome.report)
    print_summary(outcome)
    say(f"seed {config.seed}; report written to {config.report_path}")
    return 0 if outcome.verdict.ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--minutes", type=float, help="instead of SOAK_MINUTES")
    parser.add_argument("--seed", type=int, help="instead of SOAK_SEED")
    parser.add_argument("--report", help="instead of SOAK_REPORT (docs/SOAK.md)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="development only: short leases and sweeps (the report says so)",
    )
    return parser


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every process gets stopped."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - the soak could not run: say so
        say(f"the soak could not run: {error!r}")
        raise SystemExit(2) from error

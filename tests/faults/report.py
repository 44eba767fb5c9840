"""Write the fault matrix from the last fault-suite run into docs/RELIABILITY.md.

python -m pytest tests/faults && python -m tests.faults.report
"""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "var" / "fault-matrix.json"
DOC = ROOT / "docs" / "RELIABILITY.md"
START, END = "<!-- fault-matrix:start -->", "<!-- fault-matrix:end -->"


def render(rows: dict, *, run_at: datetime) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    lines = [
        START,
        f"Last run: {run_at:%Y-%m-%d %H:%M} UTC, commit {commit or 'unknown'}.",
        "",
        "| scenario | what happened | mails expected | arrived | duplicates "
        "| recovery after the fault ended, or the pace held (default settings) "
        "| test |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in sorted(rows, key=lambda name: int(name.split(".")[0])):
        row = rows[key]
        test = row["test"].split("::")[-1]
        happened = row["happened"].replace("|", "\\|")
        lines.append(
            f"| {row['scenario']} | {happened} | {row['expected']} | "
            f"{row['arrived']} | {row['duplicates']} | {_recovery(row)} | `{test}` |"
        )
    lines.append(END)
    return "\n".join(lines)


def _recovery(row: dict) -> str:
    """Seconds from the fault's end to the last held-up mail, where measured.

    Only the tests on the shipped defaults measure it; the others run on
    short test timings, so their times say nothing about production. A
    fault with no end (a relay's pace) says what was measured instead.
    """
    if row.get("measured"):
        return row["measured"].replace("|", "\\|")
    seconds = row.get("recovery")
    return "short test timings" if seconds is None else f"{seconds:.1f} s"


def main() -> int:
    if not RESULTS.exists():
        print(f"{RESULTS} not found: run `python -m pytest tests/faults` first")
        return 1
    rows = json.loads(RESULTS.read_text())
    text = DOC.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    run_at = datetime.fromtimestamp(RESULTS.stat().st_mtime, tz=UTC)
    DOC.write_text(before + render(rows, run_at=run_at) + after)
    print(f"wrote {len(rows)} scenarios to {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

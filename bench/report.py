"""Write docs/BENCHMARKS.md: bench/report.md filled with each figure's section."""

import os
import platform
import string
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

from bench.harness import table_rows
from bench.processes import ROOT, procfile_command

# Figures whose section the page shows after the targets, not with the others.
NEAR_TOP = ("stages",)


def machine(database, load, elapsed, command) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").open()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    mem = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").open()
        if line.startswith("MemTotal")
    )
    redis = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    )
    redis_version = next(
        (w[2:] for w in redis.stdout.split() if w.startswith("v=")), "?"
    )
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in (
            "django",
            "celery",
            "kombu",
            "django-celery-results",
            "gunicorn",
            "aiosmtpd",
        )
    )
    return "\n".join(
        f"- {line}"
        for line in [
            f"Command: `{command}`; {time.strftime('%Y-%m-%d %H:%M %Z')}, "
            f"commit {git}, {elapsed / 60:.1f} min",
            f"CPU: {cpu}, {os.cpu_count()} cores, shared by every process of the "
            f"run; RAM {mem / 1024 / 1024:.1f} GiB; {platform.system()} "
            f"{platform.release()}",
            f"Python {platform.python_version()}, {packages}, redis-server "
            f"{redis_version}",
            f"Database: {database.vendor} ({database.server_version()}), fresh "
            "databases",
            f"Load average at start {_load(load[0])}, at end {_load(load[1])}: "
            "other engineers' test suites may share this machine; read ratios, "
            "not milliseconds.",
            f"Web: `{' '.join(procfile_command('web'))}`; workers: `"
            f"{' '.join(procfile_command('worker'))}`",
        ]
    )


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def write(path, *, sections, command, quick, database, load, elapsed) -> None:
    targets = [t for _, figure_targets in sections.values() for t in figure_targets]
    rows = [
        [
            t.name,
            t.measured,
            "n/a" if t.met is None else ("**met**" if t.met else "**not met**"),
        ]
        for t in targets
    ]
    near_top = {name: sections[name][0] for name in NEAR_TOP if name in sections}
    page = string.Template((ROOT / "bench" / "report.md").read_text()).substitute(
        command=command,
        quick=" Quick mode: small counts, not for quoting." if quick else "",
        targets=table_rows(rows),
        stages=near_top.get("stages", "## Where each ms goes\n\nnot run.\n"),
        figures="\n".join(
            text for name, (text, _) in sections.items() if name not in near_top
        ),
        machine=machine(database, load, elapsed, command),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)

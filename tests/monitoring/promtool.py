"""Find and run promtool (Debian's `prometheus` package); CI must have it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

MONITORING = ROOT / "deploy" / "monitoring"


def promtool() -> str:
    """promtool's path; fail in CI, skip elsewhere, when it is not installed."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def run_promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    """Run `promtool <args>` in `cwd`; capture its output."""
    return subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )

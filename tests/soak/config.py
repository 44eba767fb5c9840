"""What one soak run does, read from SOAK_* variables and the command line."""

import os
import random
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT

DEFAULT_REPORT = ROOT / "docs" / "SOAK.md"

# For developing the soak on a mailer that still recovers in minutes: short
# leases and sweeps so a 2-3 minute run drains. Never part of a real report:
# the report says when any override was in force. The send time limit stays
# below the visibility timeout, as production's ratio does.
FAST_OVERRIDES = {
    "MAILER_STALE_AFTER": "5",
    "MAILER_SWEEP_INTERVAL": "1",
    "MAILER_SEND_TIME_LIMIT": "20",
    "MAILER_RETRY_BACKOFF": "1",
    "MAILER_RETRY_BACKOFF_MAX": "8",
    # A minute of relay outage at this backoff spends ~10 retries today.
    "MAILER_MAX_RETRIES": "50",
    "EMAIL_TIMEOUT": "5",
    "CELERY_VISIBILITY_TIMEOUT": "60",
}


@dataclass(frozen=True)
class SoakConfig:
    """One run's length, seed, load and bounds."""

    seed: int
    minutes: float = 5.0
    rate: float = 20.0  # registrations per second
    warmup: float = 10.0  # seconds of load before the first fault
    drain_timeout: float = 300.0  # seconds to wait for the queue after the load
    settle: float = 10.0  # seconds to wait after draining, for late duplicates
    kinds: tuple[str, ...] = ()  # fault kinds to draw from; empty: every kind
    overrides: dict[str, str] = field(default_factory=dict)
    database_server: str | None = None  # a PostgreSQL URL; None: SQLite
    report_path: Path = DEFAULT_REPORT
    keep_logs: bool = False

    @property
    def seconds(self) -> float:
        return self.minutes * 60


def config_from_environment(environ: dict[str, str] | None = None, **changes):
    """Build a SoakConfig from SOAK_* variables; keyword arguments win."""
    environ = dict(os.environ if environ is None else environ)
    values = {
        "seed": _seed(environ.get("SOAK_SEED", "")),
        "minutes": float(environ.get("SOAK_MINUTES") or 5),
        "rate": float(environ.get("SOAK_RATE") or 20),
        "drain_timeout": float(environ.get("SOAK_DRAIN_TIMEOUT") or 300),
        "settle": float(environ.get("SOAK_SETTLE") or 10),
        "kinds": tuple(filter(None, environ.get("SOAK_FAULTS", "").split(","))),
        "overrides": parse_overrides(environ.get("SOAK_ENV_OVERRIDES", "")),
        "database_server": postgres_server(environ.get("DATABASE_URL", "")),
        "report_path": Path(environ.get("SOAK_REPORT") or DEFAULT_REPORT),
        "keep_logs": environ.get("SOAK_KEEP_LOGS", "") not in ("", "0"),
    }
    values.update(changes)
    return SoakConfig(**values)


def parse_overrides(text: str) -> dict[str, str]:
    """Read "NAME=value NAME=value" (shell quoting) into a dict."""
    overrides = {}
    for word in shlex.split(text):
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise ValueError(f"SOAK_ENV_OVERRIDES: expected NAME=value, got {word!r}")
        overrides[name] = value
    return overrides


def postgres_server(database_url: str) -> str | None:
    """The server of a PostgreSQL DATABASE_URL (the soak makes its own database)."""
    if database_url.startswith(("postgres://", "postgresql://")):
        return database_url
    return None


def _seed(text: str) -> int:
    # A fresh seed from the system's entropy unless one is given to replay.
    return int(text) if text else random.SystemRandom().randrange(10**9)

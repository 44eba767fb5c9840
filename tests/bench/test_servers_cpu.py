"""The bench reads the shared servers' CPU by pid (the throughput figure)."""

import os
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bench.processes import Database, process_cpu_seconds


def server_url() -> str | None:
    """The PostgreSQL server the suite runs on, at its maintenance database."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


@pytest.mark.skipif(server_url() is None, reason="needs PostgreSQL (DATABASE_URL)")
def test_the_postgresql_server_counts_the_cpu_of_backends_that_exited(tmp_path):
    import psycopg

    pid = Database(server_url=server_url(), directory=tmp_path).server_pid()

    assert pid is not None, "the postmaster was not found"
    assert b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    before = process_cpu_seconds(pid, reaped=True)
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM generate_series(1, 5000000)").fetchone()
    deadline = time.monotonic() + 10  # the postmaster reaps the exited backend
    while process_cpu_seconds(pid, reaped=True) - before < 0.1:
        assert time.monotonic() < deadline, "the exited backend's CPU was not counted"
        time.sleep(0.05)

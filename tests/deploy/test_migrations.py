"""Migrations apply, reverse and re-apply on a database of their own.

Runs `manage.py migrate` in a subprocess against a throwaway database of the
suite's backend (an SQLite file, or a PostgreSQL database created and
dropped here), so a deploy or a rollback never meets a one-way migration.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from tests.conftest import database_url
from tests.support import ROOT

OUR_APPS = ("users", "mailer")


@pytest.fixture
def scratch_database(tmp_path):
    """A URL for an empty database on the suite's backend; dropped afterwards."""
    if connection.vendor == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
        return
    name = f"welcome_migrations_{uuid.uuid4().hex[:8]}"
    base = database_url().rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(database: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_migrations_apply_reverse_to_zero_and_apply_again(scratch_database):
    manage(scratch_database, "migrate", "--noinput")
    for app in reversed(OUR_APPS):
        manage(scratch_database, "migrate", app, "zero", "--noinput")
    listing = manage(scratch_database, "showmigrations", *OUR_APPS)
    assert "[X]" not in listing and "[ ] 0001_initial" in listing
    manage(scratch_database, "migrate", "--noinput")
    plan = manage(scratch_database, "showmigrations", "--plan")
    assert "[ ]" not in plan


def test_no_migration_is_missing_or_squashed(scratch_database):
    manage(scratch_database, "makemigrations", "--check", "--dry-run")
    for app in OUR_APPS:
        for path in Path(ROOT, app, "migrations").glob("[0-9]*.py"):
            assert "replaces = " not in path.read_text(), path

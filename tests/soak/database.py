"""The soak's throwaway database: its own on a PostgreSQL server, else SQLite."""

import os
import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


class SoakDatabase:
    """A database made for one run and dropped after it.

    The checker reads it with plain SQL (sqlite3 or psycopg), not through
    Django, so it sees what the processes wrote and nothing the soak process
    caches.
    """

    def __init__(self, *, server_url: str | None, directory: Path) -> None:
        self.server_url = server_url
        if server_url:
            self.vendor = "postgresql"
            self.name = f"soak_{os.getpid()}_{secrets.token_hex(3)}"
            self.url = _with_database(server_url, self.name)
            self.path = None
        else:
            self.vendor = "sqlite"
            self.name = "soak.sqlite3"
            self.path = directory / self.name
            self.url = f"sqlite:///{self.path}"

    def create(self) -> "SoakDatabase":
        if self.server_url:
            self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        if self.server_url:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one read-only query on a fresh connection; return every row."""
        if self.vendor == "sqlite":
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                return connection.execute(sql, params).fetchall()
            finally:
                connection.close()
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return connection.execute(sql.replace("?", "%s"), params).fetchall()

    def terminate_backends(self) -> int:
        """pg_terminate_backend every connection to the soak database; count them.

        Runs from the server's maintenance database, so every backend of the
        soak database is another process's: web, worker or beat.
        """
        if self.server_url is None:
            raise RuntimeError("no PostgreSQL server: nothing to terminate")
        return self._admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        )[0]

    def version(self) -> str:
        if self.server_url is None:
            return f"SQLite {sqlite3.sqlite_version}"
        return "PostgreSQL " + self._admin("SHOW server_version")[0]

    def _admin(self, sql: str, params: tuple = ()):
        import psycopg

        maintenance = _with_database(self.server_url, "postgres")
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params or None)
            return cursor.fetchone() if cursor.description else None


def timestamp(value) -> float | None:
    """Seconds since the epoch of a stored datetime (SQLite keeps text, in UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _with_database(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}", query=""))

"""Everything the benchmark runs, on free loopback ports, stopped by pid."""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from tests.support import free_port, stop_process, wait_until

ROOT = Path(__file__).resolve().parent.parent

# The environment of the web processes, in one place: the registration rate
# limits guard against abuse, and the load comes from one address.
WEB_ENV: dict[str, str] = {
    "RATELIMIT_REGISTER_IP": "1000000/h",
    "RATELIMIT_REGISTER_ADDRESS": "1000000/h",
}


def procfile_command(name: str) -> list[str]:
    """The Procfile's command for `name`, with ${VAR:-default} expanded."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            command = line.split(":", 1)[1].strip()
            command = re.sub(
                r"\$\{(\w+):-([^}]*)\}",
                lambda m: os.environ.get(m.group(1), m.group(2)),
                command,
            )
            return shlex.split(command)
    raise RuntimeError(f"no `{name}` process in the Procfile")


def worker_processes() -> int:
    """How many worker processes `make run` starts (WORKER_PROCESSES)."""
    script = (ROOT / "bin/run-stack").read_text()
    default = re.search(r"worker=\$\{WORKER_PROCESSES:-(\d+)\}", script).group(1)
    return int(os.environ.get("WORKER_PROCESSES", default))


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name, or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def process_cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU of a process and its live children (pool processes);
    with `reaped`, also the children that exited and it waited for (a
    PostgreSQL backend's, once its connection closed, in the postmaster's)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(child) for child in children)
    for each in pids:
        if (fields := _stat(each)) is None:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        if reaped and each == pid:
            total += (int(fields[13]) + int(fields[14])) / tick
    return total


class Database:
    """A PostgreSQL database of our own when DATABASE_URL points at a server,
    otherwise an SQLite file in the run's directory."""

    def __init__(self, *, server_url: str | None, directory: Path) -> None:
        self.server_url = server_url
        self.directory = directory
        self.siblings: list[str] = []
        if server_url:
            parts = urlsplit(server_url)
            self.name = f"bench_{os.getpid()}"
            self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
            self.vendor = "postgresql"
        else:
            self.url = f"sqlite:///{directory / 'bench.sqlite3'}"
            self.vendor = "sqlite"

    def create(self) -> "Database":
        if self.server_url:
            self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        if self.server_url:
            for name in [self.name, *self.siblings]:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sibling(self, suffix: str) -> str:
        """A second database of the same kind, on the same server; its URL."""
        name = f"{self.name}_{suffix}" if self.server_url else suffix
        self.siblings.append(name)
        if not self.server_url:
            return f"sqlite:///{self.directory / name}.sqlite3"
        self._admin(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{name}"))

    def server_pid(self) -> int | None:
        """The PostgreSQL server's postmaster, when it runs on this machine
        (the parent of this connection's backend); None for SQLite."""
        if not self.server_url:
            return None
        if not hasattr(self, "_server_pid"):
            import psycopg

            with psycopg.connect(self.server_url, autocommit=True) as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                fields = _stat(backend)  # while the backend lives
            self._server_pid = int(fields[1]) if fields else None
        return self._server_pid

    def server_version(self) -> str:
        if not self.server_url:
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}"
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql)


class Stack:
    """The processes of one benchmark run; `stop()` ends each by its pid."""

    def __init__(self, *, directory: Path, database: Database) -> None:
        self.directory = directory
        self.database = database
        self.redis_port = free_port()
        self.relay_port = free_port()
        self.relay_log = directory / "relay.log"
        self.processes: dict[str, subprocess.Popen] = {}
        self.web_ports: dict[str, int] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="bench.settings",
            DJANGO_SECRET_KEY="bench-only-secret-key-" + "x" * 40,
            DJANGO_DEBUG="0",
            DATABASE_URL=self.database.url,
            REDIS_URL=self.redis_url(0),
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=str(self.relay_port),
            SITE_URL="http://127.0.0.1:8000",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def spawn(self, name: str, argv: list[str], env: dict[str, str], cwd=ROOT):
        log = (self.directory / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> None:
        if self.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{self.log(name)[-3000:]}")

    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        data = self.directory / "redis"
        data.mkdir(exist_ok=True)
        # As the Procfile runs it: append-only, no eviction.
        argv = [binary, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(data), "--appendonly", "yes", "--save", ""]
        argv += ["--maxmemory-policy", "noeviction", "--daemonize", "no"]
        self.spawn("redis", argv, dict(os.environ))
        client = self.redis()

        def ping() -> bool:
            self.alive("redis")
            try:
                return client.ping()
            except redis.RedisError:
                return False

        wait_until(ping, timeout=10, what="redis-server")

    def servers_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the servers every system shares: this run's
        redis-server and, on PostgreSQL, the server with its backends (the
        whole server's, whoever used it)."""
        used = {"Redis": process_cpu_seconds(self.processes["redis"].pid)}
        if pid := self.database.server_pid():
            used["PostgreSQL"] = process_cpu_seconds(pid, reaped=True)
        return used

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{db}"

    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_timeout=5)

    def start_relay(self, *, delay_ms: float = 0.0) -> None:
        argv = [sys.executable, "-m", "bench.relay", "--port", str(self.relay_port)]
        argv += ["--delay-ms", str(delay_ms), "--log", str(self.relay_log)]
        self.spawn("relay", argv, self.env())
        wait_until(
            lambda: self.alive("relay") or "relay ready" in self.log("relay"),
            timeout=15,
            what="relay",
        )

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=ROOT,
            env=self.env(),
            check=True,
        )

    def start_web(self, name: str, **extra: str) -> int:
        """gunicorn as the Procfile runs it, on a free port."""
        port = free_port()
        argv = procfile_command("web")
        argv[argv.index("--bind") + 1] = f"127.0.0.1:{port}"
        argv = [sys.executable, "-m", *argv]
        self.spawn(name, argv, self.env(**WEB_ENV, **extra))
        wait_until(lambda: self.alive(name) or _listening(port), timeout=30, what=name)
        self.web_ports[name] = port
        return port

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_process(process, timeout=30)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0

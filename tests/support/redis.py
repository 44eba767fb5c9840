"""A private redis-server for the suite or for one test.

Not pytest-redis: it cannot turn Redis's default snapshots off (`--save ""`),
so a restarted server would bring back the queue the fault tests need lost.
"""

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.support.processes import stop_process
from tests.support.waiting import wait_until


class RedisServer:
    """A private redis-server on a given port, data in a temporary directory."""

    def __init__(self, port: int, *, appendonly: bool = False) -> None:
        self.port = port
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{port}/0"
        self.directory = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, timeout=10, what=f"redis-server on :{self.port}")
        return self

    def ping(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# kombu's Redis transport keeps one list per priority step (0, 3, 6, 9):
# "celery" for 0, then "celery\x06\x163" and so on (mailer.dispatch).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_length(client: redis.Redis, queue: str = "celery") -> int:
    """Messages waiting in a Celery queue, over every priority's list."""
    return sum(client.llen(queue + suffix) for suffix in PRIORITY_SUFFIXES)

"""A private Postfix (and postgrey) on loopback ports: a real relay for the tests.

Debian's `postfix` package runs here as an instance of its own, started as
root with `postfix -c <dir>`: its own main.cf and master.cf (no chroot), its
queue, data and log under a temporary directory, listening on a free
loopback port and relaying everything to the test's SMTP sink. Nothing of
the system's Postfix (/etc/postfix/main.cf, its service) is used or started.

Postfix exempts loopback clients from its anvil limits unless
`smtpd_client_event_limit_exceptions` is emptied; over a connection cap it
answers `421 4.7.0 ... too many connections` at the greeting, over a
message rate `450 4.7.1 ... too much mail` at MAIL FROM.
"""

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import stop_process
from tests.support.waiting import free_port, wait_until

POSTFIX = "/usr/sbin/postfix"
POSTGREY = "/usr/sbin/postgrey"


def postfix_installed() -> bool:
    """Whether this machine can run a private Postfix (root, the package)."""
    return os.geteuid() == 0 and Path(POSTFIX).exists()


def postgrey_installed() -> bool:
    return postfix_installed() and Path(POSTGREY).exists()


@dataclass(frozen=True)
class AnvilLimits:
    """Postfix's per-client limits (anvil); 0 leaves one off.

    `connections`: smtpd_client_connection_count_limit, simultaneous
    connections per client. `messages`: smtpd_client_message_rate_limit,
    MAIL FROM requests per client per `time_unit` (anvil_rate_time_unit).
    """

    connections: int = 0
    messages: int = 0
    time_unit: int = 60  # seconds


NO_LIMITS = AnvilLimits()


MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def main_cf(
    *, directory: Path, sink_port: int, limits: AnvilLimits, policy_port: int | None
) -> str:
    """The instance's main.cf: relay all to the sink, anvil limits for loopback."""
    recipient_restrictions = "permit_mynetworks, reject_unauth_destination"
    if policy_port is not None:
        recipient_restrictions = (
            f"check_policy_service inet:127.0.0.1:{policy_port}, "
            + recipient_restrictions
        )
    lines = {
        "compatibility_level": "3.6",
        "queue_directory": directory / "queue",
        "data_directory": directory / "data",
        "maillog_file": directory / "log" / "maillog",
        # postlogd writes only under these prefixes.
        "maillog_file_prefixes": directory / "log",
        "myhostname": "relay.test",
        "mydomain": "relay.test",
        "myorigin": "relay.test",
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:5.1.1 no local delivery here",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[127.0.0.1]:{sink_port}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
        "smtpd_recipient_restrictions": recipient_restrictions,
        # Loopback is exempt from anvil by default ($mynetworks).
        "smtpd_client_event_limit_exceptions": "",
        "smtpd_client_connection_count_limit": limits.connections,
        "smtpd_client_message_rate_limit": limits.messages,
        "anvil_rate_time_unit": f"{limits.time_unit}s",
        "smtpd_tls_security_level": "none",
        "smtp_tls_security_level": "none",
        # The sink is one loopback server: send to it at once, many at a time.
        "smtp_connect_timeout": "5s",
        "default_destination_concurrency_limit": 20,
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "biff": "no",
        "smtputf8_enable": "no",
    }
    return "".join(f"{name} = {value}\n" for name, value in lines.items())


def let_postfix_through(path: Path) -> None:
    """Give every directory above `path` o+x: mkdtemp makes them 0700."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class PostfixRelay:
    """A private Postfix instance relaying to `sink_port`, stopped by its pid."""

    def __init__(
        self,
        *,
        sink_port: int,
        limits: AnvilLimits = NO_LIMITS,
        policy_port: int | None = None,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.sink_port = sink_port
        self.limits = limits
        self.policy_port = policy_port
        self.directory = Path(tempfile.mkdtemp(prefix="test-postfix-"))
        self.pid: int | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "log" / "maillog"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> "PostfixRelay":
        if not postfix_installed():
            raise RuntimeError("a private Postfix needs root and the postfix package")
        let_postfix_through(self.directory)
        for name in ("queue", "data", "log"):
            (self.directory / name).mkdir()
        shutil.chown(self.directory / "data", "postfix", "postfix")
        (self.directory / "main.cf").write_text(
            main_cf(
                directory=self.directory,
                sink_port=self.sink_port,
                limits=self.limits,
                policy_port=self.policy_port,
            )
        )
        (self.directory / "master.cf").write_text(
            MASTER_CF.format(port=f"127.0.0.1:{self.port}")
        )
        started = self._postfix("start")
        if started.returncode != 0:
            raise RuntimeError(f"postfix did not start:\n{started.stderr}{self.log()}")
        self.pid = wait_until(self._master_pid, timeout=20, what="postfix master")
        wait_until(self._greets, timeout=20, what=f"postfix on :{self.port}")
        return self

    def _postfix(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [POSTFIX, "-c", str(self.directory), command],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def _master_pid(self) -> int | None:
        try:
            pid = int((self.directory / "queue/pid/master.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _greets(self) -> bool:
        import smtplib

        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as client:
                return client.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    def queued(self) -> int:
        """Messages in Postfix's own queue (accepted, not yet at the sink)."""
        queue = self.directory / "queue"
        return sum(
            len(files)
            for name in ("incoming", "active", "deferred", "maildrop")
            for _, _, files in os.walk(queue / name)
        )

    def stop(self) -> None:
        """`postfix stop`, then make sure the master's pid is gone (SIGKILL else)."""
        if self.pid is None:
            return
        self._postfix("stop")
        try:
            wait_until(lambda: not _alive(self.pid), timeout=10, what="postfix stop")
        except AssertionError:
            os.kill(self.pid, signal.SIGKILL)
            wait_until(lambda: not _alive(self.pid), timeout=5, what="postfix killed")
        self.pid = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Postgrey:
    """postgrey as a policy server on a loopback port, its own db, stopped by pid.

    Every (client, sender, recipient) triplet is deferred (450) until `delay`
    seconds after it was first seen; no client is ever whitelisted for
    having delivered before (--auto-whitelist-clients=0).
    """

    def __init__(self, *, delay: int, port: int | None = None) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.directory = Path(tempfile.mkdtemp(prefix="test-postgrey-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> "Postgrey":
        if not postgrey_installed():
            raise RuntimeError("postgrey needs root and the postgrey package")
        let_postfix_through(self.directory)
        dbdir = self.directory / "db"
        dbdir.mkdir()
        shutil.chown(dbdir, "postgrey", "postgrey")
        log = (self.directory / "postgrey.log").open("ab")
        self.process = subprocess.Popen(
            [
                POSTGREY,
                f"--inet=127.0.0.1:{self.port}",
                f"--delay={self.delay}",
                "--auto-whitelist-clients=0",
                f"--dbdir={dbdir}",
                "--user=postgrey",
                "--group=postgrey",
                "--greylist-text=Greylisted for %s seconds",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._listening, timeout=20, what=f"postgrey on :{self.port}")
        return self

    def _listening(self) -> bool:
        import socket

        if self.process.poll() is not None:
            raise AssertionError(f"postgrey exited early:\n{self.log()}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return (self.directory / "postgrey.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers signal 0: look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


__all__ = [
    "NO_LIMITS",
    "AnvilLimits",
    "PostfixRelay",
    "Postgrey",
    "postfix_installed",
    "postgrey_installed",
]

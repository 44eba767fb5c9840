"""Waiting for what the system under test does: a free port, a condition, a row."""

import random
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailer.models import Delivery


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, below the ephemeral range.

    The kernel's own pick (bind to port 0) comes from the ephemeral range,
    where every outgoing connection takes its local port too: a server
    started minutes after its port was chosen (the suite's SMTP server
    starts at the first test that needs it) could find it taken by some
    client's connection. Ports below that range are only ever taken on
    purpose.
    """
    low, high = 20000, _ephemeral_start()
    for _ in range(100):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {low}..{high - 1}")


def _ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux), else IANA's."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            start = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152
    return start if start > 21000 else 49152


def wait_until(predicate, *, timeout: float, interval: float = 0.05, what: str = ""):
    """Poll `predicate` until it returns a truthy value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_delivery(
    *, email: str, status: str, timeout: float = 20, interval: float = 0.1
) -> "Delivery":
    """Wait until the outbox row of the mail to `email` has `status`; return it."""
    # Imported when called: tests.services imports this package before
    # pytest-django has set Django up.
    from mailer.models import Delivery

    return wait_until(
        lambda: Delivery.objects.filter(user__email=email, status=status).first(),
        timeout=timeout,
        interval=interval,
        what=f"the delivery to {email} {status}",
    )

"""Waiting for what the system under test does: a free port, a condition, a row."""

import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailer.models import Delivery


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

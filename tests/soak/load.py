"""The load: an open-loop stream of registrations, each with a new address."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PASSWORD = "correct horse battery staple"


@dataclass
class Registration:
    """One POST /api/register and what came back."""

    email: str
    sent_at: float  # time.monotonic() when the request left
    answered_at: float | None = None  # time.monotonic() of the answer (the commit)
    status: int | None = None  # None: no answer (refused, reset, timed out)
    error: str = ""


class RegistrationLoad:
    """Send `rate` registrations a second to the web process until stopped.

    Open loop: a request is due every 1/rate seconds whatever the earlier
    ones do, so a slow server sees the backlog a real crowd would make; at
    most `clients` are in flight, and how late the last one left is kept.
    """

    def __init__(
        self, *, port: int, rate: float, prefix: str, clients: int = 64
    ) -> None:
        self.port = port
        self.rate = rate
        self.prefix = prefix
        self.pool = ThreadPoolExecutor(max_workers=clients, thread_name_prefix="load")
        self.registrations: list[Registration] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._schedule, daemon=True)
        self.max_lateness = 0.0
        self.scheduled = 0  # due so far; those not sent when stopped are dropped

    def start(self) -> "RegistrationLoad":
        self.thread.start()
        return self

    def stop(self, *, timeout: float = 40.0) -> list[Registration]:
        """Stop sending; wait (bounded) for the answers in flight; return them all."""
        self.stopping.set()
        self.thread.join(timeout)
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            return list(self.registrations)

    def snapshot(self) -> list[Registration]:
        with self.lock:
            return list(self.registrations)

    def _schedule(self) -> None:
        start = time.monotonic()
        number = 0
        while not self.stopping.is_set():
            due = start + number / self.rate
            wait = due - time.monotonic()
            if wait > 0 and self.stopping.wait(wait):
                return
            email = f"{self.prefix}-{number:06d}@soak.example.com"
            self.pool.submit(self._register, email, due)
            number += 1
            self.scheduled = number

    def _register(self, email: str, due: float) -> None:
        registration = Registration(email=email, sent_at=time.monotonic())
        with self.lock:
            self.registrations.append(registration)
            # Late when every client waits on a slow answer: the backlog.
            self.max_lateness = max(self.max_lateness, registration.sent_at - due)
        body = json.dumps({"email": email, "password": PASSWORD})
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(
                "POST", "/api/register", body, {"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            response.read()
            registration.status = response.status
        except (OSError, http.client.HTTPException) as error:
            registration.error = type(error).__name__
        finally:
            registration.answered_at = time.monotonic()
            connection.close()

"""The load generator: threads, http.client, loopback only, bounded counts."""

import http.client
import json
import threading
import time
from dataclasses import dataclass

PASSWORD = "correct horse battery staple 42"


@dataclass
class Response:
    email: str
    started: float  # time.time() when the request was sent
    latency: float  # seconds until the whole answer was read
    status: int


def register(port: int, path: str, email: str) -> Response:
    """POST one JSON registration on a new connection (gunicorn's sync workers
    close each one)."""
    body = json.dumps({"email": email, "password": PASSWORD})
    started, clock = time.time(), time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        status = answer.status
    finally:
        conn.close()
    return Response(email, started, time.perf_counter() - clock, status)


def closed_loop(
    *, port: int, path: str, emails: list[str], clients: int
) -> tuple[list[Response], float]:
    """`clients` threads send back to back until every email is registered;
    return the answers and the wall time."""
    pending = list(reversed(emails))
    lock = threading.Lock()
    answers: list[Response] = []

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                email = pending.pop()
            answer = register(port, path, email)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    clock = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _checked(answers), time.perf_counter() - clock


def _checked(answers: list[Response]) -> list[Response]:
    bad = [a for a in answers if a.status != 202]
    if bad:
        raise RuntimeError(f"{len(bad)} registrations answered {bad[0].status}")
    return answers

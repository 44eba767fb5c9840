"""A fake Postmark API on a loopback port, speaking Postmark's documented JSON.

`POST /email` answers like Postmark (https://postmarkapp.com/developer/api/
email-api): 200 with the accepted mail's MessageID, or the error shapes for
an inactive recipient (422, ErrorCode 406), an invalid address (422,
ErrorCode 300), a bad server token (401, ErrorCode 10), a rate limit (429)
and a server error (500). Replies are scripted per recipient, attempt by
attempt ("slow" accepts the mail, then answers after `slow_seconds`: a
client that timed out meanwhile does not know it was sent); every request
is kept.
"""

import json
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "fake-postmark-server-token"


def _inactive(address: str) -> tuple[int, dict]:
    return 422, {
        "ErrorCode": 406,
        "Message": "You tried to send to a recipient that has been marked as "
        f"inactive.\nFound inactive addresses: {address.lower()}.\nInactive "
        "recipients are ones that have generated a hard bounce or a spam "
        "complaint. ",
    }


def _invalid(address: str) -> tuple[int, dict]:
    return 422, {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{address}'."}


REPLIES = {
    "inactive": _inactive,
    "invalid": _invalid,
    "bad-token": lambda address: (
        401,
        {
            "ErrorCode": 10,
            "Message": "The Server Token you provided in the "
            "X-Postmark-Server-Token request header was invalid. Please verify "
            "that you are using a valid token.",
        },
    ),
    "rate-limited": lambda address: (
        429,
        {"ErrorCode": 429, "Message": "Rate limit exceeded, retry later."},
    ),
    "server-error": lambda address: (
        500,
        {"ErrorCode": 500, "Message": "Internal Server Error"},
    ),
}


class FakePostmark:
    """Postmark's /email endpoint on 127.0.0.1, in a thread of the test process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.accepted: list[dict] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.replies: dict[str, list[str]] = {}
        self.slow_seconds = 2.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def start(self) -> "FakePostmark":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.accepted.clear()
            self.attempts.clear()
            self.replies.clear()

    def accepted_to(self, address: str) -> list[dict]:
        with self.lock:
            return [m for m in self.accepted if m["To"].lower() == address.lower()]

    def answer(self, body: dict, token: str) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(body)
            if token != TOKEN:
                return REPLIES["bad-token"]("")
            to = body.get("To", "")
            self.attempts[to.lower()] += 1
            scripted = self.replies.get(to.lower())
            reply = scripted.pop(0) if scripted else "ok"
            if reply not in {"ok", "slow"}:
                return REPLIES[reply](to)
            self.accepted.append(body)
        if reply == "slow":
            time.sleep(self.slow_seconds)
        return 200, {
            "To": to,
            "SubmittedAt": datetime.now(UTC).isoformat(),
            "MessageID": str(uuid.uuid4()),
            "ErrorCode": 0,
            "Message": "OK",
        }

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/email":
                    status, answer = 404, {"ErrorCode": 404, "Message": "Not found"}
                else:
                    token = self.headers.get("X-Postmark-Server-Token", "")
                    status, answer = fake.answer(body, token)
                data = json.dumps(answer).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out ("slow"): it never hears the answer

            def log_message(self, format, *args) -> None:
                pass

        return Handler


def bounce_event(*, email: str, event_id: int, delivery_id=None, type_="HardBounce"):
    """A Bounce webhook body as Postmark's docs show it."""
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": event_id,
        "Type": type_,
        "TypeCode": 1 if type_ == "HardBounce" else 4096,
        "Name": "Hard bounce" if type_ == "HardBounce" else "Soft bounce",
        "Tag": "",
        "MessageID": str(uuid.uuid4()),
        "Metadata": {} if delivery_id is None else {"delivery_id": str(delivery_id)},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: "
        "unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach "
        "does not exist.",
        "Email": email,
        "From": "no-reply@example.com",
        "BouncedAt": "2026-12-03T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": type_ == "HardBounce",
        "CanActivate": True,
        "Subject": "Welcome! Please activate your account",
    }


def spam_complaint_event(*, email: str, event_id: int, delivery_id=None):
    """A SpamComplaint webhook body as Postmark's docs show it."""
    return {
        "RecordType": "SpamComplaint",
        "MessageStream": "outbound",
        "ID": event_id,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "Tag": "",
        "MessageID": str(uuid.uuid4()),
        "Metadata": {} if delivery_id is None else {"delivery_id": str(delivery_id)},
        "ServerID": 23,
        "Description": "",
        "Details": "Test spam complaint details",
        "Email": email,
        "From": "no-reply@example.com",
        "BouncedAt": "2026-12-03T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": False,
        "Subject": "Welcome! Please activate your account",
    }


def delivery_event(*, email: str, delivery_id=None):
    """A Delivery webhook body (no ID: Postmark gives delivery events none)."""
    return {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": str(uuid.uuid4()),
        "Recipient": email,
        "Tag": "",
        "DeliveredAt": "2026-12-03T16:33:54.9070259Z",
        "Details": "Test delivery webhook details",
        "Metadata": {} if delivery_id is None else {"delivery_id": str(delivery_id)},
    }


def serve_webhooks(settings, secret: str):
    """Serve the /anymail/ URLs for one test, as ANYMAIL_WEBHOOK_SECRET does.

    A generator for a fixture (`yield from serve_webhooks(settings, SECRET)`):
    project.urls is reloaded with the secret set, and again without it after.
    """
    import importlib

    from django.urls import clear_url_caches

    import project.urls

    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": secret}
    importlib.reload(project.urls)
    clear_url_caches()
    yield
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": None}
    importlib.reload(project.urls)
    clear_url_caches()

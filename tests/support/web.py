"""Registering through the JSON API, with Django's test client or over real HTTP."""

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

PASSWORD = "correct horse battery staple"


def register(client, email: str, password: str = PASSWORD, **extra):
    """POST `email` and `password` to /api/register through `client`.

    `client` is Django's test client (`extra` goes into the request's
    environ, e.g. REMOTE_ADDR) or an `HttpClient` for a running server.
    """
    body = json.dumps({"email": email, "password": password})
    return client.post("/api/register", body, content_type="application/json", **extra)


@dataclass
class HttpResponse:
    """What a running server answered: its status and its body."""

    status_code: int
    content: bytes

    def json(self) -> dict:
        return json.loads(self.content or b"{}")


class HttpClient:
    """The test client's `get` and `post`, sent over HTTP to a running server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, *, timeout: float = 10) -> HttpResponse:
        return self._send(urllib.request.Request(self.base_url + path), timeout)

    def post(
        self, path: str, data: str, *, content_type: str, timeout: float = 30
    ) -> HttpResponse:
        request = urllib.request.Request(
            self.base_url + path,
            data=data.encode(),
            headers={"Content-Type": content_type},
            method="POST",
        )
        return self._send(request, timeout)

    @staticmethod
    def _send(request: urllib.request.Request, timeout: float) -> HttpResponse:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return HttpResponse(response.status, response.read())
        except urllib.error.HTTPError as error:
            return HttpResponse(error.code, error.read())

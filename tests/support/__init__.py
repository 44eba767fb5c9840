"""Real servers and processes for the tests, and the helpers that wait on them.

The names are re-exported here so that `from tests.support import X` works
whichever module holds X.
"""

from tests.support.processes import (
    ROOT,
    BeatProcess,
    GunicornProcess,
    ProjectProcess,
    WorkerProcess,
    run_manage,
    stop_process,
)
from tests.support.redis import RedisServer
from tests.support.smtp import (
    ReceivedMail,
    RecordingHandler,
    SilentSmtpServer,
    SmtpScript,
    SmtpServer,
)
from tests.support.waiting import free_port, wait_for_delivery, wait_until
from tests.support.web import HttpClient, HttpResponse, register

__all__ = [
    "ROOT",
    "BeatProcess",
    "GunicornProcess",
    "HttpClient",
    "HttpResponse",
    "ProjectProcess",
    "ReceivedMail",
    "RecordingHandler",
    "RedisServer",
    "SilentSmtpServer",
    "SmtpScript",
    "SmtpServer",
    "WorkerProcess",
    "free_port",
    "register",
    "run_manage",
    "stop_process",
    "wait_for_delivery",
    "wait_until",
]

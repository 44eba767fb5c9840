"""SMTP policy: which failures are worth a retry, and one reused connection."""

import smtplib
import ssl
import threading
import time
from dataclasses import dataclass

from django.core.mail import EmailMessage, get_connection


@dataclass(frozen=True)
class SendFailure:
    """What went wrong with one send, classified by SMTP reply code."""

    transient: bool
    code: int | None
    reason: str


def classify_smtp_error(error: BaseException) -> SendFailure:
    """Tell a transient failure (retry) from a permanent one (fail at once).

    Every smtplib exception is an OSError, so the type alone says little:
    4xx replies are transient, 5xx replies permanent; a recipient refused at
    RCPT TO counts by its own code. Timeouts and dropped or refused
    connections are transient.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = list(error.recipients.values())
        codes = [code for code, _ in replies]
        code = max(codes) if codes else None
        reason = "; ".join(_text(message) for _, message in replies)
        return SendFailure(transient=_is_transient(code), code=code, reason=reason)
    if isinstance(error, smtplib.SMTPResponseException):
        code = error.smtp_code
        reason = _text(error.smtp_error)
        return SendFailure(transient=_is_transient(code), code=code, reason=reason)
    if isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return SendFailure(transient=False, code=None, reason=str(error))
    if isinstance(error, OSError):  # timeouts, resets, disconnects, DNS
        reason = str(error) or type(error).__name__
        return SendFailure(transient=True, code=None, reason=reason)
    raise TypeError(f"not an SMTP error: {error!r}")


def _is_transient(code: int | None) -> bool:
    # smtplib reports a reply it could not parse as code -1.
    return code is None or code < 500


def _text(message: bytes | str) -> str:
    if isinstance(message, bytes):
        return message.decode("utf-8", "replace")
    return str(message)


class ReusedConnection:
    """One SMTP connection per worker thread, reused across sends.

    Opened on first use and re-opened after an error or when a NOOP finds
    the idle connection closed; `close_all` ends every one at shutdown.
    """

    IDLE_CHECK_AFTER = 5.0  # seconds idle before a NOOP checks the line

    _local = threading.local()
    _all: set = set()
    _lock = threading.Lock()

    @classmethod
    def send(cls, message: EmailMessage) -> None:
        backend = cls._backend()
        try:
            backend.send_messages([message])
        except BaseException:
            cls._discard(backend)
            raise
        cls._local.last_used = time.monotonic()

    @classmethod
    def close_all(cls) -> None:
        with cls._lock:
            backends, cls._all = cls._all, set()
        for backend in backends:
            _close_quietly(backend)
        cls._local.__dict__.clear()

    @classmethod
    def _backend(cls):
        backend = getattr(cls._local, "backend", None)
        if backend is not None and not cls._is_alive(backend):
            cls._discard(backend)
            backend = None
        if backend is None:
            backend = get_connection(fail_silently=False)
            backend.open()
            cls._local.backend = backend
            cls._local.last_used = time.monotonic()
            with cls._lock:
                cls._all.add(backend)
        return backend

    @classmethod
    def _is_alive(cls, backend) -> bool:
        idle = time.monotonic() - getattr(cls._local, "last_used", 0.0)
        smtp = getattr(backend, "connection", None)
        if smtp is None or idle < cls.IDLE_CHECK_AFTER:
            return True
        try:
            return smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False

    @classmethod
    def _discard(cls, backend) -> None:
        _close_quietly(backend)
        cls._local.backend = None
        with cls._lock:
            cls._all.discard(backend)


def _close_quietly(backend) -> None:
    try:
        backend.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        pass

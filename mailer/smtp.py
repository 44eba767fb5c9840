"""SMTP policy: which failures are worth a retry, and one reused connection."""

import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.core.mail import EmailMessage
from django.core.mail.backends import smtp as django_smtp

from mailer.mailers import get_mailer

# 421: the relay is closing the channel, for every mail, not for this one.
SERVICE_NOT_AVAILABLE = 421


@dataclass(frozen=True)
class SendFailure:
    """What went wrong with one send, classified by SMTP reply code."""

    transient: bool
    code: int | None
    reason: str
    # The relay as a whole is unusable (refused, dropped, timed out, 421, a
    # 4xx before any recipient): not this mail's fault, so no retry is spent.
    relay_wide: bool = False


def classify_smtp_error(error: BaseException) -> SendFailure:
    """Tell a transient failure (retry) from a permanent one (fail at once).

    Every smtplib exception is an OSError, so the type alone says little:
    4xx replies are transient, 5xx replies permanent; a recipient refused at
    RCPT TO counts by its own code. Timeouts and dropped or refused
    connections are transient, and relay-wide like a 421 or a 4xx to the
    greeting, EHLO or MAIL FROM; a 4xx for one recipient or one message
    (greylisting) is this mail's own.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = list(error.recipients.values())
        codes = [code for code, _ in replies]
        code = max(codes) if codes else None
        reason = "; ".join(_text(message) for _, message in replies)
        relay_wide = bool(codes) and all(c == SERVICE_NOT_AVAILABLE for c in codes)
        return SendFailure(_is_transient(code), code, reason, relay_wide)
    if isinstance(error, smtplib.SMTPResponseException):
        code = error.smtp_code
        reason = _text(error.smtp_error)
        before_recipients = not isinstance(error, smtplib.SMTPDataError)
        relay_wide = _is_transient(code) and (
            code == SERVICE_NOT_AVAILABLE or before_recipients
        )
        return SendFailure(_is_transient(code), code, reason, relay_wide)
    if isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return SendFailure(transient=False, code=None, reason=str(error))
    if isinstance(error, OSError):  # timeouts, resets, disconnects, DNS
        reason = str(error) or type(error).__name__
        return SendFailure(transient=True, code=None, reason=reason, relay_wide=True)
    raise TypeError(f"not an SMTP error: {error!r}")


def _is_transient(code: int | None) -> bool:
    # smtplib reports a reply it could not parse as code -1.
    return code is None or code < 500


def _text(message: bytes | str) -> str:
    if isinstance(message, bytes):
        return message.decode("utf-8", "replace")
    return str(message)


class ClaimLost(Exception):
    """The attempt no longer holds its row: the message must not be sent."""


class _FencedMixin:
    """Check a fence right before DATA: past it, the relay has the mail.

    `fence` is set per send; when it returns False (another attempt took the
    row over) the transaction is abandoned before any data is handed over.
    """

    fence: Callable[[], bool] | None = None

    def data(self, msg):
        if self.fence is not None and not self.fence():
            raise ClaimLost("claim lost before DATA")
        return super().data(msg)


class FencedSMTP(_FencedMixin, smtplib.SMTP):
    pass


class FencedSMTPSSL(_FencedMixin, smtplib.SMTP_SSL):
    pass


class EmailBackend(django_smtp.EmailBackend):
    """Django's SMTP backend, checking the attempt's claim before DATA."""

    @property
    def connection_class(self):
        return FencedSMTPSSL if self.use_ssl else FencedSMTP


def probe_relay(*, sender: str, recipient: str) -> None:
    """Ask the relay to take a mail without sending one; raise if it would not.

    Connect, EHLO, MAIL FROM and RCPT TO (a relay that defers every
    recipient with 421 is down too), then RSET: no data is handed over. A
    5xx for the recipient still shows a relay that answers. Raises what the
    connection raised, or the 4xx reply.
    """
    backend = get_mailer()
    backend.open()
    try:
        smtp = getattr(backend, "connection", None)
        if smtp is None:  # not an SMTP backend: nothing to probe
            return
        smtp.ehlo_or_helo_if_needed()
        for command, argument in ((smtp.mail, sender), (smtp.rcpt, recipient)):
            code, message = command(argument)
            if 400 <= code < 500:
                raise smtplib.SMTPResponseException(code, message)
        smtp.rset()
    finally:
        _close_quietly(backend)


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
    def send(
        cls, message: EmailMessage, *, fence: Callable[[], bool] | None = None
    ) -> None:
        """Send one message; `fence` is asked right before DATA, if at all.

        A backend that is not SMTP (the test suite's in-memory one) has no
        DATA: the fence is asked before the message is handed to it.
        """
        backend = cls._backend()
        smtp = getattr(backend, "connection", None)
        fenced = isinstance(smtp, _FencedMixin)
        try:
            if fenced:
                smtp.fence = fence
            elif fence is not None and not fence():
                raise ClaimLost("claim lost before sending")
            backend.send_messages([message])
        except BaseException:
            cls._discard(backend)
            raise
        finally:
            if fenced:
                smtp.fence = None
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
            backend = get_mailer()
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

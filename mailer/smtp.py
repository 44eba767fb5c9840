"""SMTP policy: which failures are worth a retry, throttling, and the probe."""

import re
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from django.core.mail.backends import smtp as django_smtp

# 421: the relay is closing the channel, for every mail, not for this one.
SERVICE_NOT_AVAILABLE = 421
# SES: "454 Throttling failure: Maximum sending rate exceeded".
THROTTLING_FAILURE = 454
# "452 4.5.3 Too many messages" / "too many recipients": the session's own cap.
TOO_MANY = 452

# Words of a relay saying "slow down" (Postfix's anvil: "too many
# connections", "too much mail"; SES: "Throttling failure", "rate exceeded";
# Microsoft 365: "message submission rate ... exceeded").
_THROTTLE_WORDS = re.compile(
    r"too many|too much|throttl|\brate\b|slow down|concurren",
    re.IGNORECASE,
)
_ENHANCED_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class SendFailure:
    """What went wrong with one send, classified by SMTP reply code."""

    transient: bool
    code: int | None
    reason: str
    # The relay as a whole is unusable (refused, dropped, timed out, 421, a
    # 4xx before any recipient): not this mail's fault, so no retry is spent.
    relay_wide: bool = False
    # The relay answers but takes no more from us right now: the mail waits
    # its turn; no retry spent, nothing parked, the relay is not down.
    throttled: bool = False
    # Which limit a throttle reply was about: "connections" (refused at the
    # greeting), "rate" (a mail refused as too fast) or "reply" (another
    # throttle reply: a session's message cap, a 4xx at MAIL FROM while our
    # other connections send).
    limit: str = ""


def classify_smtp_error(error: BaseException, *, others_open: int = 0) -> SendFailure:
    """Tell a transient failure (retry) from a permanent one (fail at once).

    Every smtplib exception is an OSError, so the type alone says little:
    4xx replies are transient, 5xx replies permanent; a recipient refused at
    RCPT TO counts by its own code. Timeouts and dropped or refused
    connections are transient, and relay-wide like a 421 or a 4xx to the
    greeting, EHLO or MAIL FROM; a 4xx for one recipient or one message
    (greylisting) is this mail's own.

    A 4xx is throttling, not an outage, when its words say so (4.7.x "too
    many connections", "too much mail", SES's 454 "Throttling failure", a
    452 "too many messages"), or when it comes at the greeting or MAIL FROM
    while `others_open` other connections of ours still hold the relay.
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = list(error.recipients.values())
        codes = [code for code, _ in replies]
        code = max(codes) if codes else None
        reason = "; ".join(_text(message) for _, message in replies)
        relay_wide = bool(codes) and all(c == SERVICE_NOT_AVAILABLE for c in codes)
        failure = SendFailure(_is_transient(code), code, reason, relay_wide)
        return _throttled(failure, "rate") if _says_throttled(code, reason) else failure
    if isinstance(error, smtplib.SMTPResponseException):
        code = error.smtp_code
        reason = _text(error.smtp_error)
        before_recipients = not isinstance(error, smtplib.SMTPDataError)
        relay_wide = _is_transient(code) and (
            code == SERVICE_NOT_AVAILABLE or before_recipients
        )
        failure = SendFailure(_is_transient(code), code, reason, relay_wide)
        return _throttle_of(error, failure, others_open)
    if isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return SendFailure(transient=False, code=None, reason=str(error))
    if isinstance(error, OSError):  # timeouts, resets, disconnects, DNS
        reason = str(error) or type(error).__name__
        return SendFailure(transient=True, code=None, reason=reason, relay_wide=True)
    raise TypeError(f"not an SMTP error: {error!r}")


def _throttle_of(
    error: smtplib.SMTPResponseException, failure: SendFailure, others_open: int
) -> SendFailure:
    """The throttled form of a reply's failure, if the reply is a throttle."""
    if not failure.transient or failure.code is None:
        return failure
    greeting = isinstance(error, smtplib.SMTPConnectError)
    sender = isinstance(error, smtplib.SMTPSenderRefused)
    if _says_throttled(failure.code, failure.reason):
        if greeting or "connection" in failure.reason.lower():
            return _throttled(failure, "connections")
        if failure.code == TOO_MANY:
            return _throttled(failure, "reply")
        return _throttled(failure, "rate")
    if others_open > 0 and greeting and failure.code == SERVICE_NOT_AVAILABLE:
        return _throttled(failure, "connections")
    if others_open > 0 and sender:
        return _throttled(failure, "reply")
    return failure


def _says_throttled(code: int | None, reason: str) -> bool:
    """Whether a 4xx reply's code or words say "too many, too fast"."""
    if code is None or not 400 <= code < 500:
        return False
    if code == THROTTLING_FAILURE:
        return True
    enhanced = _ENHANCED_CODE.match(reason)
    if enhanced and enhanced.group(2) not in {"7", "5", "3"}:
        # 4.2.x (greylisting, mailbox busy), 4.4.x (routing): this mail's own.
        return False
    return bool(_THROTTLE_WORDS.search(reason))


def _throttled(failure: SendFailure, limit: str) -> SendFailure:
    return SendFailure(
        transient=True,
        code=failure.code,
        reason=failure.reason,
        relay_wide=False,
        throttled=True,
        limit=limit,
    )


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


def _close_quietly(backend) -> None:
    try:
        backend.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        pass

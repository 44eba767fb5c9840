import smtplib
import ssl

import pytest

from mailer.smtp import classify_smtp_error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (smtplib.SMTPDataError(451, b"4.3.0 Try again later"), 451),
        (smtplib.SMTPSenderRefused(421, b"4.7.0 Too busy", "from@example.com"), 421),
        (smtplib.SMTPConnectError(421, "Service not available"), 421),
        (
            smtplib.SMTPRecipientsRefused(
                {"a@example.com": (450, b"4.2.1 Mailbox busy")}
            ),
            450,
        ),
        (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), None),
        (TimeoutError("timed out"), None),
        (TimeoutError(), None),
        (ConnectionRefusedError(111, "Connection refused"), None),
        (ConnectionResetError(104, "Connection reset by peer"), None),
    ],
)
def test_4xx_replies_timeouts_and_dropped_connections_are_transient(error, code):
    failure = classify_smtp_error(error)

    assert failure.transient
    assert failure.code == code
    assert failure.reason


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (smtplib.SMTPDataError(554, b"5.7.1 Message rejected as spam"), 554, "spam"),
        (
            smtplib.SMTPSenderRefused(553, b"5.1.8 Bad sender", "f@example.com"),
            553,
            "sender",
        ),
        (
            smtplib.SMTPAuthenticationError(535, b"5.7.8 Bad credentials"),
            535,
            "credentials",
        ),
        (
            smtplib.SMTPRecipientsRefused(
                {"a@example.com": (550, b"5.1.1 No such user")}
            ),
            550,
            "No such user",
        ),
    ],
)
def test_5xx_replies_and_refused_recipients_are_permanent_with_reason_kept(
    error, code, text
):
    failure = classify_smtp_error(error)

    assert not failure.transient
    assert failure.code == code
    assert text in failure.reason


def test_missing_starttls_and_bad_certificate_are_permanent():
    assert not classify_smtp_error(smtplib.SMTPNotSupportedError("STARTTLS")).transient
    assert not classify_smtp_error(ssl.SSLCertVerificationError("bad cert")).transient


def test_something_that_is_not_an_smtp_error_is_not_classified():
    with pytest.raises(TypeError):
        classify_smtp_error(ValueError("bug"))

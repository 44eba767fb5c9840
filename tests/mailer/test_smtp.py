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


@pytest.mark.parametrize(
    ("error", "limit"),
    [
        # Postfix over its per-client connection cap (anvil), at the greeting.
        (
            smtplib.SMTPConnectError(
                421, b"4.7.0 relay.example Error: too many connections from 10.0.0.7"
            ),
            "connections",
        ),
        # Postfix over its per-client message rate, at MAIL FROM.
        (
            smtplib.SMTPSenderRefused(
                450,
                b"4.7.1 <no-reply@example.com>: Error: too much mail from 10.0.0.7",
                "no-reply@example.com",
            ),
            "rate",
        ),
        # Amazon SES above the account's sending rate.
        (
            smtplib.SMTPDataError(
                454, b"Throttling failure: Maximum sending rate exceeded."
            ),
            "rate",
        ),
        (
            smtplib.SMTPSenderRefused(
                451, b"4.7.0 Rate limit exceeded, slow down", "no-reply@example.com"
            ),
            "rate",
        ),
        # A session's message cap.
        (smtplib.SMTPDataError(452, b"4.5.3 Too many messages"), "reply"),
        # Microsoft 365's concurrent connection limit.
        (
            smtplib.SMTPConnectError(
                421,
                b"4.3.2 The maximum number of concurrent connections has exceeded "
                b"a limit, closing transmission channel",
            ),
            "connections",
        ),
        (
            smtplib.SMTPRecipientsRefused(
                {"a@example.com": (450, b"4.7.1 Error: too many recipients from x")}
            ),
            "rate",
        ),
    ],
)
def test_replies_that_say_too_many_or_too_fast_are_throttling_not_an_outage(
    error, limit
):
    failure = classify_smtp_error(error)

    assert failure.throttled and failure.transient
    assert not failure.relay_wide
    assert failure.limit == limit


def test_a_421_at_the_greeting_is_throttling_while_other_connections_of_ours_send():
    error = smtplib.SMTPConnectError(421, b"4.3.2 Service not available")

    while_others_send = classify_smtp_error(error, others_open=3)
    with_none_working = classify_smtp_error(error, others_open=0)

    assert while_others_send.throttled and while_others_send.limit == "connections"
    assert not while_others_send.relay_wide
    assert with_none_working.relay_wide and not with_none_working.throttled


def test_a_4xx_at_mail_from_is_throttling_only_while_other_connections_send():
    error = smtplib.SMTPSenderRefused(
        451, b"4.3.0 Try again later", "no-reply@example.com"
    )

    assert classify_smtp_error(error, others_open=2).throttled
    alone = classify_smtp_error(error, others_open=0)
    assert alone.relay_wide and not alone.throttled


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        smtplib.SMTPServerDisconnected("Connection unexpectedly closed"),
    ],
)
def test_refused_and_timed_out_connections_are_an_outage_whatever_else_is_open(error):
    failure = classify_smtp_error(error, others_open=5)

    assert failure.relay_wide and not failure.throttled


@pytest.mark.parametrize(
    "error",
    [
        # postgrey: the first try of a new triplet.
        smtplib.SMTPRecipientsRefused(
            {
                "a@example.com": (
                    450,
                    b"4.2.0 <a@example.com>: Recipient address rejected: "
                    b"Greylisted, see http://postgrey.schweikert.ch/help/x.html",
                )
            }
        ),
        smtplib.SMTPDataError(451, b"4.7.1 Greylisted, come back later"),
        smtplib.SMTPRecipientsRefused(
            {"a@example.com": (452, b"4.2.2 Mailbox full: too many messages")}
        ),
    ],
)
def test_greylisting_and_one_mailbox_are_this_mails_own_retry(error):
    failure = classify_smtp_error(error, others_open=5)

    assert failure.transient
    assert not failure.throttled and not failure.relay_wide


def test_a_5xx_that_mentions_a_rate_is_still_permanent():
    error = smtplib.SMTPDataError(554, b"5.7.1 Rejected: sending rate abuse")

    failure = classify_smtp_error(error)

    assert not failure.transient and not failure.throttled

"""The scriptable relay answers as each mode says, and records only its 250s."""

import os
import smtplib
import socket
from email.message import EmailMessage

import pytest

from tests.soak.checker import WelcomeRow, check
from tests.soak.load import Registration
from tests.soak.relay import RelayMode, ScriptableRelay
from tests.support import free_port


@pytest.fixture
def relay():
    relay = ScriptableRelay(free_port(), sender_pids=lambda: [os.getpid()]).start()
    yield relay
    relay.stop()


def send(relay: ScriptableRelay, to: str = "a@soak.example.com", *, timeout=5.0):
    message = EmailMessage()
    message["From"] = "no-reply@example.com"
    message["To"] = to
    message["Message-ID"] = f"<{to}>"
    message["Subject"] = "Welcome"
    message.set_content("hello")
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=timeout) as client:
        client.send_message(message)


def test_accepted_mail_is_recorded_with_message_id_and_sender_pid(relay):
    send(relay)

    (mail,) = relay.accepted()
    assert (mail.message_id, mail.recipient) == (
        "<a@soak.example.com>",
        "a@soak.example.com",
    )
    assert mail.sender_pid == os.getpid()


def test_refuse_stops_listening(relay):
    relay.set_mode(RelayMode.REFUSE)

    with pytest.raises(ConnectionRefusedError):
        send(relay)
    relay.set_mode(RelayMode.ACCEPT)
    send(relay)
    assert len(relay.accepted()) == 1


@pytest.mark.parametrize(
    ("mode", "code"), [(RelayMode.DEFER_421, 421), (RelayMode.DEFER_451, 451)]
)
def test_defer_answers_rcpt_with_a_4xx_for_everyone(relay, mode, code):
    relay.set_mode(mode)

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(relay)
    assert list(refused.value.recipients.values())[0][0] == code
    assert relay.accepted() == []


@pytest.mark.parametrize("mode", [RelayMode.STALL_SILENT, RelayMode.STALL_SLOW])
def test_stall_outlasts_the_client_timeout(relay, mode):
    relay.set_mode(mode)

    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        send(relay, timeout=1.0)
    relay.set_mode(RelayMode.ACCEPT)
    send(relay)
    assert len(relay.accepted()) == 1


def test_drop_after_data_cuts_the_line_and_records_nothing(relay):
    relay.set_mode(RelayMode.DROP_AFTER_DATA)

    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(relay)
    assert relay.accepted() == []
    assert relay.counts()["dropped after DATA"] == 1


def test_a_second_copy_through_the_relay_fails_the_checker(relay):
    send(relay)
    send(relay)

    verdict = check(
        registrations=[Registration("a@soak.example.com", 0.0, 0.0, 202)],
        rows=[WelcomeRow("a@soak.example.com", "<a@soak.example.com>", "sent", 1, 0.0)],
        accepted=relay.accepted(),
        faults=[],
    )
    assert not verdict.ok
    assert [len(d.copies) for d in verdict.duplicates] == [2]


def test_connection_cap_refuses_sessions_over_it_at_the_greeting(relay):
    relay.set_mode(RelayMode.CAP_CONNECTIONS)
    held = [smtplib.SMTP("127.0.0.1", relay.port, timeout=5) for _ in range(4)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", relay.port, timeout=5)
        assert refused.value.smtp_code == 421
        assert b"too many connections" in refused.value.smtp_error
    finally:
        for client in held:
            client.quit()
    send(relay)  # a slot is free again
    assert len(relay.accepted()) == 1


def test_throttle_answers_454_above_its_rate_a_second(relay):
    relay.set_mode(RelayMode.THROTTLE_RATE)
    outcomes = []
    for n in range(8):
        try:
            send(relay, to=f"r{n}@soak.example.com")
            outcomes.append(250)
        except smtplib.SMTPSenderRefused as refused:
            outcomes.append(refused.smtp_code)

    assert outcomes.count(250) in (5, 6)  # one window, or the start of a second
    assert set(outcomes) == {250, 454}
    assert relay.counts()["throttled 454"] == outcomes.count(454)

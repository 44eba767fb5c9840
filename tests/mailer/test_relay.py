import pytest

from mailer import relay
from mailer.models import RelayState
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def relay_down():
    relay.note_down("[Errno 111] Connection refused")
    return RelayState.objects.get()


def test_the_first_probe_waits_the_probe_interval(relay_down, settings):
    assert not relay.take_probe(relay_down)  # not due at once: no hammering

    RelayState.objects.update(probe_due_at=relay_down.down_since)
    assert relay.take_probe(relay_down)
    assert not relay.take_probe(relay_down)  # one prober at a time


def test_a_probe_that_a_relay_defers_at_rcpt_keeps_it_down(relay_down, smtp, real_smtp):
    smtp.script.rcpt_reply = "421 4.3.2 Try again later"

    assert not relay.probe()
    assert RelayState.objects.get().down_since is not None
    assert smtp.received == []


def test_a_probe_that_the_relay_answers_releases_every_parked_mail(
    relay_down, smtp, real_smtp, django_capture_on_commit_callbacks
):
    parked = DeliveryFactory(waiting_for_relay=True)

    assert relay.probe()
    assert RelayState.objects.get().down_since is None
    parked.refresh_from_db()
    assert not parked.waiting_for_relay
    assert smtp.received == []  # the probe hands over no mail


def test_each_outage_right_after_a_release_doubles_the_probe_interval(settings):
    settings.MAILER_RELAY_PROBE_INTERVAL = 5
    settings.MAILER_RELAY_PROBE_INTERVAL_MAX = 60

    assert [relay.probe_interval(n) for n in (1, 2, 3, 4, 5, 9)] == [
        5,
        10,
        20,
        40,
        60,
        60,
    ]

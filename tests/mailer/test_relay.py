from datetime import timedelta

import pytest
from django.utils import timezone

from mailer import relay, sweeper
from mailer.models import RelayState
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def parked(count: int):
    """Rows parked for the relay, as claims.park_for_relay leaves them."""
    backstop = timezone.now() + timedelta(minutes=5)
    return DeliveryFactory.create_batch(
        count, waiting_for_relay=True, lease_expires_at=backstop
    )


@pytest.fixture
def relay_down(monkeypatch):
    """The relay marked down; the sweeps a release would publish are counted."""
    sweeps = []
    monkeypatch.setattr(sweeper, "sweep_stale_deliveries", lambda: sweeps.append(1))
    relay.note_down("[Errno 111] Connection refused")
    state = RelayState.objects.get()
    state.sweeps = sweeps
    return state


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


def test_a_probe_that_the_relay_answers_lets_the_oldest_parked_mail_through_alone(
    relay_down, smtp, real_smtp, django_capture_on_commit_callbacks
):
    oldest, younger = parked(2)

    assert relay.probe()

    state = RelayState.objects.get()
    assert state.down_since is not None  # a probe cannot test DATA
    assert state.trial_delivery_id == oldest.pk
    oldest.refresh_from_db()
    younger.refresh_from_db()
    assert (oldest.waiting_for_relay, younger.waiting_for_relay) == (False, True)
    assert not relay.relay_is_down(oldest.pk)
    assert relay.relay_is_down(younger.pk) and relay.relay_is_down()
    assert relay_down.sweeps  # the trial is published now
    assert smtp.received == []  # the probe hands over no mail


def test_a_probe_answered_with_nothing_parked_marks_the_relay_up(
    relay_down, smtp, real_smtp
):
    assert relay.probe()

    assert RelayState.objects.get().down_since is None
    assert not relay.relay_is_down()


def test_the_trial_mail_accepted_releases_every_parked_mail(
    relay_down, smtp, real_smtp
):
    oldest, younger = parked(2)
    relay.probe()

    relay.note_delivered()

    state = RelayState.objects.get()
    assert (state.down_since, state.trial_delivery_id) == (None, None)
    younger.refresh_from_db()
    assert not younger.waiting_for_relay


def test_a_trial_that_fails_again_is_no_new_outage(relay_down, smtp, real_smtp):
    oldest, younger = parked(2)
    relay.probe()

    relay.note_down("Connection unexpectedly closed")  # the trial, after DATA

    state = RelayState.objects.get()
    assert state.down_since == relay_down.down_since
    assert state.outages == relay_down.outages == 1  # the next probe is not later
    younger.refresh_from_db()
    assert younger.waiting_for_relay


def test_the_next_probe_tries_the_next_parked_mail_not_the_failed_trial_again(
    relay_down, smtp, real_smtp
):
    first, second, third = parked(3)
    relay.probe()
    # The trial is dropped after DATA and parked again, as attempts does.
    relay.note_down("Connection unexpectedly closed")
    type(first).objects.filter(pk=first.pk).update(waiting_for_relay=True)

    assert relay.note_answered(sign="probe answered") == second.pk
    relay.note_down("Connection unexpectedly closed")
    type(second).objects.filter(pk=second.pk).update(waiting_for_relay=True)
    assert relay.note_answered(sign="probe answered") == third.pk

    assert RelayState.objects.get().trial_delivery_id == third.pk
    first.refresh_from_db()
    assert first.waiting_for_relay  # one trial at a time


def test_trials_wrap_round_to_the_oldest_parked_mail(relay_down, smtp, real_smtp):
    only, last = parked(2)
    RelayState.objects.update(trial_delivery_id=last.pk)
    type(last).objects.filter(pk=last.pk).delete()  # sent or failed since

    assert relay.note_answered(sign="probe answered") == only.pk


def test_a_round_of_failed_trials_over_every_parked_mail_doubles_the_probe_interval(
    relay_down, smtp, real_smtp
):
    # A relay that drops every mail after DATA may have kept each copy: a
    # few parked mails must not each be tried at every probe of a long outage.
    first, second = parked(2)

    def fails_again(row):  # the trial's send parked it again
        type(row).objects.filter(pk=row.pk).update(waiting_for_relay=True)

    assert relay.note_answered(sign="probe answered") == first.pk
    fails_again(first)
    assert relay.note_answered(sign="probe answered") == second.pk
    assert RelayState.objects.get().outages == 1  # a mail not tried yet: same pace
    fails_again(second)

    assert relay.note_answered(sign="probe answered") == first.pk  # round again
    assert RelayState.objects.get().outages == 2
    assert relay.probe_interval(2) == 2 * relay.probe_interval(1)


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

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from mailer import claims
from mailer.models import Delivery
from tests.factories import DeliveryFactory
from users.tokens import make_activation_token, read_activation_token

pytestmark = pytest.mark.django_db


@pytest.fixture
def delivery():
    return DeliveryFactory(user__email="ada@example.com")


def test_claim_returns_the_row_with_its_user_and_marks_it_sending(delivery):
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    assert claimed.pk == delivery.pk
    assert (claimed.kind, claimed.message_id) == (delivery.kind, delivery.message_id)
    assert (claimed.status, claimed.task_id, claimed.attempts) == (
        Delivery.Status.SENDING,
        "first",
        1,
    )
    assert claimed.user.pk == delivery.user_id
    assert claimed.user.email == "ada@example.com"
    assert claimed.user.is_active is False and claimed.user.activated_at is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.task_id, delivery.attempts) == (
        Delivery.Status.SENDING,
        "first",
        1,
    )
    assert delivery.lease_expires_at > delivery.updated_at


def test_the_claimed_row_carries_what_rendering_reads_without_another_query(
    django_assert_num_queries,
):
    delivery = DeliveryFactory(user__email="ana@example.com", language="es")
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    with django_assert_num_queries(0):
        read = (claimed.language, claimed.kind, claimed.message_id, claimed.user.email)

    assert read == ("es", delivery.kind, delivery.message_id, "ana@example.com")


def test_second_claim_of_one_row_gets_nothing(delivery):
    claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    assert claims.claim_delivery(delivery_id=delivery.pk, task_id="second") is None
    delivery.refresh_from_db()
    assert (delivery.task_id, delivery.attempts) == ("first", 1)


def test_activation_link_from_a_claimed_row_names_its_user(delivery):
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    token = make_activation_token(claimed.user)

    assert read_activation_token(token).pk == delivery.user_id


def test_a_fresh_claim_passes_its_fence_without_a_query(
    delivery, django_assert_num_queries
):
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    with django_assert_num_queries(0):
        assert claims.still_held(claimed)


def test_a_claim_past_half_its_lease_asks_the_database_and_fails_once_lapsed(
    delivery, monkeypatch, settings
):
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")
    # A second ago, not now: SQLite's NOW has millisecond precision, so a
    # lease stamped now by Python could still be ahead of it.
    lapsed = timezone.now() - timedelta(seconds=1)
    Delivery.objects.filter(pk=delivery.pk).update(lease_expires_at=lapsed)
    later = time.monotonic() + settings.MAILER_LEASE / 2 + 0.1
    monkeypatch.setattr(claims.time, "monotonic", lambda: later)
    # The lease ran out in the database meanwhile: a frozen worker lost the row.

    assert not claims.still_held(claimed)


def test_a_claim_past_half_its_lease_still_held_is_renewed(
    delivery, monkeypatch, settings
):
    claimed = claims.claim_delivery(delivery_id=delivery.pk, task_id="first")
    before = Delivery.objects.get(pk=delivery.pk).lease_expires_at
    later = time.monotonic() + settings.MAILER_LEASE / 2 + 0.1
    monkeypatch.setattr(claims.time, "monotonic", lambda: later)

    assert claims.still_held(claimed)
    assert Delivery.objects.get(pk=delivery.pk).lease_expires_at > before


def test_mark_sent_records_the_send_only_under_the_claim_that_holds_the_row(delivery):
    claims.claim_delivery(delivery_id=delivery.pk, task_id="first")

    assert not claims.mark_sent(delivery_id=delivery.pk, task_id="stale copy")
    assert claims.mark_sent(delivery_id=delivery.pk, task_id="first")

    delivery.refresh_from_db()
    assert (delivery.status, delivery.smtp_code, delivery.last_error) == (
        Delivery.Status.SENT,
        250,
        "",
    )
    assert delivery.updated_at == delivery.sent_at
    assert delivery.sent_at > delivery.created_at
    assert Delivery.objects.filter(sent_at__gte=delivery.created_at).exists()

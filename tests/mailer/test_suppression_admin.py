"""The suppression list in the admin: list, search, filter, add by hand, lift."""

import logging

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.urls import reverse

from mailer.models import Suppression

pytestmark = pytest.mark.django_db

SUPPRESSIONS = reverse("admin:mailer_suppression_changelist")


@pytest.fixture
def entries():
    return [
        Suppression.objects.create(
            address="gone@example.com",
            reason=Suppression.Reason.HARD_BOUNCE,
            source=Suppression.Source.SMTP,
            evidence="550 5.1.1 No such user here",
        ),
        Suppression.objects.create(
            address="angry@example.com",
            reason=Suppression.Reason.COMPLAINT,
            source=Suppression.Source.WEBHOOK,
            evidence="Postmark complained event 42: ",
        ),
    ]


def test_the_list_shows_address_reason_source_and_evidence(admin_client, entries):
    page = admin_client.get(SUPPRESSIONS).content.decode()

    assert "gone@example.com" in page and "angry@example.com" in page
    assert "550 5.1.1 No such user here" in page
    assert "Hard bounce" in page and "ESP webhook event" in page


def test_the_list_filters_by_reason_and_searches_by_address(admin_client, entries):
    complaints = admin_client.get(SUPPRESSIONS, {"reason__exact": "complaint"})
    found = admin_client.get(SUPPRESSIONS, {"q": "gone@"})

    assert "angry@example.com" in complaints.content.decode()
    assert "gone@example.com" not in complaints.content.decode()
    assert "gone@example.com" in found.content.decode()
    assert "angry@example.com" not in found.content.decode()


def test_lifting_removes_the_address_and_is_logged(
    admin_client, admin_user, entries, caplog
):
    gone = entries[0]

    with caplog.at_level(logging.WARNING, logger="mailer.suppression"):
        response = admin_client.post(
            SUPPRESSIONS,
            {"action": "lift", "_selected_action": [gone.pk]},
            follow=True,
        )

    assert "Lifted 1 suppression(s)." in response.content.decode()
    assert list(Suppression.objects.values_list("address", flat=True)) == [
        "angry@example.com"
    ]
    [entry] = LogEntry.objects.filter(action_flag=DELETION)
    assert entry.user_id == admin_user.pk
    assert entry.object_repr == "gone@example.com"
    assert "Lifted" in entry.get_change_message()
    assert any(
        f"suppression {gone.pk} (hard_bounce) lifted by {admin_user.get_username()}"
        in r.getMessage()
        for r in caplog.records
    )


def test_an_admin_adds_an_address_by_hand(admin_client):
    response = admin_client.post(
        reverse("admin:mailer_suppression_add"),
        {"address": "Typo@EXAMPLE.com", "reason": "manual", "evidence": "asked"},
    )

    assert response.status_code == 302
    entry = Suppression.objects.get()
    assert entry.address == "Typo@example.com"
    assert (entry.reason, entry.source) == ("manual", "admin")


def test_an_address_already_listed_in_another_case_is_refused(admin_client, entries):
    response = admin_client.post(
        reverse("admin:mailer_suppression_add"),
        {"address": "GONE@example.com", "reason": "manual", "evidence": ""},
    )

    assert response.status_code == 200  # the form again, with the error
    assert Suppression.objects.count() == 2


def test_a_suppression_cannot_be_deleted_only_lifted(admin_client, entries):
    url = reverse("admin:mailer_suppression_delete", args=[entries[0].pk])

    assert admin_client.get(url).status_code == 403

"""/metrics shows the suppression list, bounces by source and withheld sends."""

import pytest

from mailer import suppression
from mailer.models import Suppression
from mailer.tasks import send_welcome_email
from tests.factories import DeliveryFactory
from tests.monitoring.scrape import basic_auth, value

# The scrape reads the database on its own thread.
pytestmark = pytest.mark.django_db(transaction=True)

LOGIN = "prometheus:s3cret-scrape"


@pytest.fixture(autouse=True)
def _metrics_login(settings):
    settings.METRICS_BASIC_AUTH = LOGIN


def scrape(client) -> str:
    response = client.get("/metrics", HTTP_AUTHORIZATION=basic_auth(LOGIN))
    assert response.status_code == 200
    return response.content.decode()


def test_the_list_is_counted_by_reason_with_zeros(client):
    for n, reason in enumerate(["hard_bounce", "hard_bounce", "complaint"]):
        Suppression.objects.create(address=f"p{n}@example.com", reason=reason)

    page = scrape(client)

    assert value(page, "mailer_suppressions", reason="hard_bounce") == 2
    assert value(page, "mailer_suppressions", reason="complaint") == 1
    assert value(page, "mailer_suppressions", reason="manual") == 0


def test_bounces_by_source_and_withheld_sends_are_counted(client, mailoutbox):
    before = scrape(client)
    suppression.suppress(
        address="gone@example.com",
        reason="hard_bounce",
        source="webhook",
        evidence="Postmark bounced event 1",
    )
    delivery = DeliveryFactory(user__email="gone@example.com")
    send_welcome_email.apply(args=(delivery.pk,))

    after = scrape(client)

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (
            value(before, name, **labels) or 0
        )

    assert delta("mailer_bounces_total", reason="hard_bounce", source="webhook") == 1
    assert delta("mailer_deliveries_total", kind="welcome", outcome="suppressed") == 1
    assert value(after, "mailer_outbox_rows", status="suppressed", kind="welcome") == 1
    assert mailoutbox == []

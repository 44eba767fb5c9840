"""resend_failed's options, dry run, refusals and batch marking (no publish)."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_results.models import TaskResult

from mailer import rerun
from mailer.models import Delivery
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def resend_failed(*args: str) -> str:
    out = StringIO()
    call_command("resend_failed", *args, stdout=out)
    return out.getvalue()


def failed_delivery(email: str, **fields) -> Delivery:
    return DeliveryFactory(
        user__email=email,
        status=Delivery.Status.FAILED,
        attempts=1,
        smtp_code=550,
        last_error="5.1.1 Mailbox does not exist",
        **fields,
    )


def test_dry_run_lists_failed_rows_with_their_smtp_reason_and_changes_nothing():
    row = failed_delivery("gone@example.com")
    TaskResult.objects.create(
        task_id=row.task_id,
        status="FAILURE",
        result='{"exc_type": "SMTPRecipientsRefused", "exc_message": ["550 no"]}',
    )
    before = list(Delivery.objects.values())

    output = resend_failed("--dry-run")

    assert f"Delivery {row.pk} (welcome) <gone@example.com>" in output
    assert "550 5.1.1 Mailbox does not exist" in output
    assert f"task {row.task_id}: SMTPRecipientsRefused: 550 no" in output
    assert "Dry run: Would rerun 1 failed deliveries (1 with a failed task" in output
    assert "Nothing was changed." in output
    assert list(Delivery.objects.values()) == before


def test_a_sent_row_asked_for_by_id_is_not_resent_and_the_command_says_so():
    sent = DeliveryFactory(status=Delivery.Status.SENT)

    output = resend_failed("--id", str(sent.pk))

    assert f"Delivery {sent.pk}: already sent; not resending." in output
    assert "Nothing to rerun: Rerun 0 failed deliveries" in output
    assert "skipped 1 (already sent: 1)" in output
    assert Delivery.objects.get(pk=sent.pk).status == Delivery.Status.SENT


def test_pending_rows_asked_for_by_id_are_skipped_as_not_failed():
    pending = DeliveryFactory(status=Delivery.Status.PENDING)

    output = resend_failed("--id", str(pending.pk), "--dry-run")

    assert f"Delivery {pending.pk}: not failed: pending" in output
    assert "Would rerun 0" in output


def test_since_and_limit_narrow_what_is_rerun():
    old = failed_delivery("old@example.com")
    Delivery.objects.filter(pk=old.pk).update(
        updated_at=timezone.now() - timedelta(days=3)
    )
    recent = [failed_delivery(f"recent{n}@example.com") for n in range(3)]

    since_output = resend_failed("--dry-run", "--since", "2h")
    limited_output = resend_failed("--dry-run", "--limit", "2")
    dated_output = resend_failed(
        "--dry-run", "--since", (timezone.now() - timedelta(days=4)).date().isoformat()
    )

    assert "<old@example.com>" not in since_output
    assert all(f"<{r.user.email}>" in since_output for r in recent)
    assert "Would rerun 2 " in limited_output
    assert "Would rerun 4 " in dated_output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "999999"], "Unknown delivery id(s): 999999."),
        (["--since", "yesterday"], "--since 'yesterday': expected an ISO date"),
        (["--since", "2x"], "--since '2x': expected an ISO date"),
        (["--limit", "-1"], "--limit must be 1 or more, not -1."),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(args, message):
    failed = failed_delivery("keep@example.com")

    with pytest.raises(
        CommandError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        resend_failed(*args)

    assert Delivery.objects.get(pk=failed.pk).status == Delivery.Status.FAILED


def test_nothing_failed_means_nothing_to_do():
    DeliveryFactory(status=Delivery.Status.SENT)

    output = resend_failed()

    assert output.startswith("Nothing to rerun: Rerun 0 failed deliveries")


def listed(rows: list[Delivery]) -> list:
    """The rows as resend_failed lists them before it marks them."""
    return rerun._failed_deliveries(
        Delivery.objects.filter(pk__in=[row.pk for row in rows]).order_by("pk")
    )


def test_marking_a_batch_for_rerun_gives_each_row_a_new_task_id_in_a_few_queries(
    django_assert_max_num_queries,
):
    rows = [failed_delivery(f"r{n}@example.com") for n in range(40)]
    batch = listed(rows)

    with django_assert_max_num_queries(6):  # not one UPDATE per row
        jobs = rerun._mark_for_rerun(batch)

    assert [(j.job.delivery_id, j.old_task_id) for j in jobs] == [
        (r.pk, r.task_id) for r in rows
    ]
    new_ids = {j.job.delivery_id: j.job.task_id for j in jobs}
    assert len(set(new_ids.values()) | {r.task_id for r in rows}) == 80
    for fresh in Delivery.objects.filter(pk__in=new_ids):
        assert fresh.status == Delivery.Status.PENDING
        assert fresh.task_id == new_ids[fresh.pk]
        assert fresh.lease_expires_at > timezone.now()


def test_a_row_that_stopped_being_failed_after_listing_is_not_marked_for_rerun():
    kept, taken = failed_delivery("a@example.com"), failed_delivery("b@example.com")
    batch = listed([kept, taken])
    Delivery.objects.filter(pk=taken.pk).update(status=Delivery.Status.SENT)

    jobs = rerun._mark_for_rerun(batch)

    assert [j.job.delivery_id for j in jobs] == [kept.pk]
    fresh = Delivery.objects.get(pk=taken.pk)
    assert (fresh.status, fresh.task_id) == (Delivery.Status.SENT, taken.task_id)

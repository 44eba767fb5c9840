import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from mailer import sweeper
from mailer.models import Delivery
from mailer.sweeper import sweep_stale_deliveries
from mailer.tasks import sweep_stale_deliveries as sweep_task
from tests.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


def test_a_sweep_leaves_rows_whose_lease_has_not_passed():
    later = timezone.now() + timedelta(minutes=5)
    pending = DeliveryFactory(lease_expires_at=later)
    sending = DeliveryFactory(status=Delivery.Status.SENDING, lease_expires_at=later)

    report = sweep_stale_deliveries()

    assert (report.reclaimed, report.redispatched) == (0, [])
    for row in (pending, sending):
        fresh = Delivery.objects.get(pk=row.pk)
        assert (fresh.status, fresh.task_id) == (row.status, row.task_id)


def test_a_sweep_never_touches_sent_or_failed_rows():
    earlier = timezone.now() - timedelta(hours=1)
    sent = DeliveryFactory(status=Delivery.Status.SENT, lease_expires_at=earlier)
    failed = DeliveryFactory(status=Delivery.Status.FAILED, lease_expires_at=earlier)

    report = sweep_stale_deliveries()

    assert (report.reclaimed, report.redispatched) == (0, [])
    assert Delivery.objects.get(pk=sent.pk).status == Delivery.Status.SENT
    assert Delivery.objects.get(pk=failed.pk).status == Delivery.Status.FAILED


def test_a_sweep_publishes_the_oldest_mails_first_whatever_their_leases(
    monkeypatch,
):
    published = []
    monkeypatch.setattr(
        sweeper, "publish_deliveries", lambda jobs: published.extend(jobs)
    )
    now = timezone.now()
    # The oldest mail's lease passed last: a throttled mail held a while.
    oldest, older, newest = DeliveryFactory.create_batch(3)
    for row, ago in ((oldest, 1), (older, 30), (newest, 60)):
        Delivery.objects.filter(pk=row.pk).update(
            lease_expires_at=now - timedelta(seconds=ago)
        )

    first = sweep_stale_deliveries(batch_size=2, max_batches=1)
    second = sweep_stale_deliveries(batch_size=2, max_batches=1)

    assert first.redispatched == [oldest.pk, older.pk]
    assert second.redispatched == [newest.pk]
    assert [job.delivery_id for job in published] == [oldest.pk, older.pk, newest.pk]


def test_the_sweep_task_logs_what_it_did(caplog):
    with caplog.at_level(logging.INFO, logger="mailer.tasks"):
        result = sweep_task.apply().get()

    assert result == {"reclaimed": 0, "redispatched": 0, "not_published": 0}
    assert "sweep reclaimed=0 redispatched=0 not_published=0" in caplog.text


def test_beat_schedules_the_sweep_every_sweep_interval(settings):
    from celery_app import app

    entry = app.conf.beat_schedule["sweep-stale-deliveries"]

    assert entry["task"] == sweep_task.name
    assert entry["schedule"] == settings.MAILER_SWEEP_INTERVAL


def test_a_sweep_takes_a_whole_batch_in_the_same_few_queries(
    monkeypatch, django_assert_max_num_queries
):
    monkeypatch.setattr(sweeper, "publish_deliveries", lambda jobs: None)
    rows = DeliveryFactory.create_batch(60)
    Delivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=5))

    # Reclaim, find, take, read back, metrics: not one UPDATE per row.
    with django_assert_max_num_queries(10):
        report = sweep_stale_deliveries()

    assert report.redispatched == [row.pk for row in rows]
    taken = Delivery.objects.filter(pk__in=report.redispatched)
    assert len({row.task_id for row in taken}) == 60
    assert all(row.lease_expires_at > timezone.now() for row in taken)


def test_a_row_another_sweep_takes_meanwhile_is_left_to_that_sweep(monkeypatch):
    published = []
    monkeypatch.setattr(
        sweeper, "publish_deliveries", lambda jobs: published.extend(jobs)
    )
    first, second = DeliveryFactory.create_batch(2)
    Delivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    new_task_id = sweeper.uuid.uuid4

    def other_sweep_takes_second():
        # Between this sweep's read and its take, another sweep took `second`.
        Delivery.objects.filter(pk=second.pk).update(task_id="the-other-sweeps")
        monkeypatch.setattr(sweeper.uuid, "uuid4", new_task_id)
        return new_task_id()

    monkeypatch.setattr(sweeper.uuid, "uuid4", other_sweep_takes_second)

    report = sweep_stale_deliveries()

    assert report.redispatched == [first.pk]
    assert [job.delivery_id for job in published] == [first.pk]
    assert Delivery.objects.get(pk=second.pk).task_id == "the-other-sweeps"
    assert Delivery.objects.get(pk=first.pk).task_id == published[0].task_id


def test_a_batch_over_the_backends_parameter_limit_is_taken_in_chunks(monkeypatch):
    # SQLite before 3.32 takes at most 999 parameters a statement.
    monkeypatch.setattr(sweeper, "publish_deliveries", lambda jobs: None)
    # A class attribute on Django 5.2, a property (the build's own limit) on 6.1.
    monkeypatch.setattr(type(connection.features), "max_query_params", 60)
    rows = DeliveryFactory.create_batch(25)
    Delivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=5))
    parameters = []

    def count(execute, sql, params, many, context):
        parameters.append(len(params or ()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        report = sweep_stale_deliveries()

    assert report.redispatched == [row.pk for row in rows]
    assert len(set(Delivery.objects.values_list("task_id", flat=True))) == 25
    assert max(parameters) <= 60

"""Dispatch: publish the send task of committed rows, and check the broker.

Publishing goes through the Celery app by task name; this module does not
import the tasks, so the tasks may import everything else.
"""

import logging
import time
import uuid
from typing import NamedTuple

from celery import current_app
from django.db.models.functions import Now

from mailer.models import Delivery

logger = logging.getLogger(__name__)

WELCOME_TASK = "mailer.tasks.send_welcome_email"
ACCOUNT_MAIL_TASK = "mailer.tasks.send_account_mail"
PUBLISH_BATCH_SIZE = 1000
BROKER_CHECK_TIMEOUT = 2.0  # seconds
BROKER_BACKOFF = 2.0  # seconds without publishing from this process after a failure
# Queue order. Redis serves priority 0 first (kombu's priority_steps 0, 3, 6,
# 9, each its own list). A mail published again (a retry, a throttled turn,
# a rescue, a release from the relay's parking, a rerun) has waited already,
# so it goes before the mails published fresh from a commit: after an outage
# or under throttling, the backlog goes out roughly in commit order instead of
# each returning mail queuing behind every newer one.
FRESH_PRIORITY = 3
WAITED_PRIORITY = 0
_broker_failed_at = -BROKER_BACKOFF  # time.monotonic() of the last failed publish


class PublishJob(NamedTuple):
    """One send task to publish: the row, the task id it goes with, its kind."""

    delivery_id: int
    task_id: str
    kind: str


def task_name_for(kind: str) -> str:
    """The send task of a kind: welcome mails have their own, fixed name."""
    return WELCOME_TASK if kind == Delivery.Kind.WELCOME else ACCOUNT_MAIL_TASK


def dispatch_delivery(
    delivery_id: int, task_id: str | None = None, *, kind: str = Delivery.Kind.WELCOME
) -> str:
    """Publish a fresh row's send task; return the task id it went with."""
    task_id = task_id or str(uuid.uuid4())
    current_app.send_task(
        task_name_for(kind),
        args=(delivery_id,),
        task_id=task_id,
        priority=FRESH_PRIORITY,
    )
    return task_id


def dispatch_after_commit(
    delivery_id: int, task_id: str, kind: str = Delivery.Kind.WELCOME
) -> None:
    """Publish a committed row's task; on a broker error log it and move on.

    The row stays pending, marked due, and a worker's lifeline publishes it
    once the broker answers, so a broker outage never turns a committed
    registration into an error. For BROKER_BACKOFF seconds after a failure
    this process does not try the broker at all: each try costs the request
    up to a second while Redis is down. (Django 5.2's `robust=True` would
    log `func.__qualname__`, which a partial lacks.)
    """
    global _broker_failed_at
    if time.monotonic() - _broker_failed_at < BROKER_BACKOFF:
        logger.warning("Dispatch of delivery %s deferred: broker down", delivery_id)
        _make_due(delivery_id)
        return
    try:
        dispatch_delivery(delivery_id, task_id, kind=kind)
    except Exception:  # noqa: BLE001 - the row and the sweeper cover any failure
        _broker_failed_at = time.monotonic()
        logger.exception(
            "Dispatch of delivery %s failed; left pending for the sweeper", delivery_id
        )
        _make_due(delivery_id)


def forget_broker_failure() -> None:
    """Try the broker on the next dispatch (tests; a new process)."""
    global _broker_failed_at
    _broker_failed_at = -BROKER_BACKOFF


def _make_due(delivery_id: int) -> None:
    """Let the next rescue publish a row whose dispatch failed, not the backstop.

    A worker's lifeline publishes due rows seconds after the broker answers
    again; if this write fails too, the row keeps its MAILER_STALE_AFTER lease.
    """
    try:
        Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING).update(
            lease_expires_at=Now()
        )
    except Exception:  # noqa: BLE001 - the backstop lease still covers the row
        logger.exception("Could not mark delivery %s due", delivery_id)


class BrokerUnreachable(Exception):
    """The broker did not answer within the check's timeout."""


def check_broker(*, timeout: float, url: str | None = None) -> None:
    """Open one connection to the broker; raise BrokerUnreachable if it fails.

    Connecting to Redis pings it, so a stopped or frozen server fails here
    within about `timeout` seconds instead of in the middle of a publish.
    """
    connection = current_app.connection_for_write(
        url,
        connect_timeout=timeout,
        transport_options={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        },
    )
    try:
        connection.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - any failure means unreachable
        raise BrokerUnreachable(type(error).__name__) from error
    finally:
        connection.release()


def publish_deliveries(jobs: list[PublishJob]) -> None:
    """Publish one send task per job, pipelined, ahead of fresh mails.

    One pooled producer and kombu's publish batch: the messages go to Redis
    in a few round trips. Raises on any broker error; a batch that failed
    may have been partly delivered (the claim makes a stray copy harmless).
    """
    with current_app.producer_or_acquire() as producer:
        with producer.batch(max_size=PUBLISH_BATCH_SIZE):
            for job in jobs:
                current_app.send_task(
                    task_name_for(job.kind),
                    args=(job.delivery_id,),
                    task_id=job.task_id,
                    producer=producer,
                    retry=False,
                    priority=WAITED_PRIORITY,
                )

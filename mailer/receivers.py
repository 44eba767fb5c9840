"""Receivers that turn account events into outbox rows."""

from functools import partial

from django.db import transaction

from mailer.services import create_welcome_delivery, dispatch_after_commit


def queue_welcome_email(sender, *, user, **kwargs) -> None:
    """Write the welcome mail's outbox row; publish its task after commit."""
    delivery = create_welcome_delivery(user_id=user.pk)
    transaction.on_commit(partial(dispatch_after_commit, delivery.pk, delivery.task_id))

"""Receivers that turn account events into outbox rows."""

from functools import partial

from django.db import transaction

from mailer.dispatch import dispatch_after_commit
from mailer.models import Delivery
from mailer.outbox import create_repeatable_delivery, create_welcome_delivery


def queue_welcome_email(sender, *, user, **kwargs) -> None:
    """Write the welcome mail's outbox row; publish its task after commit."""
    _dispatch_on_commit(create_welcome_delivery(user=user))


def queue_account_exists_notice(sender, *, user, **kwargs) -> None:
    """Write a "you already have an account" row unless one went out lately."""
    kind = Delivery.Kind.ACCOUNT_EXISTS
    _dispatch_on_commit(create_repeatable_delivery(user=user, kind=kind))


def queue_activation_email(sender, *, user, **kwargs) -> None:
    """Write a new-activation-link row unless one went out lately."""
    kind = Delivery.Kind.ACTIVATION
    _dispatch_on_commit(create_repeatable_delivery(user=user, kind=kind))


def _dispatch_on_commit(delivery: Delivery | None) -> None:
    if delivery is not None:
        transaction.on_commit(
            partial(dispatch_after_commit, delivery.pk, delivery.task_id, delivery.kind)
        )

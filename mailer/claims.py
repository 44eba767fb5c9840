"""Claims: one attempt's hold on a row, from claim to the final mark.

Every change is a conditional UPDATE on the row's status and task id, so of
any number of copies of a task only the one holding the claim moves the row.
"""

import functools
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from mailer.leases import lease
from mailer.messages import build_message
from mailer.models import Delivery, Suppression
from mailer.pool import Connection


def claim_delivery(*, delivery_id: int, task_id: str) -> Delivery | None:
    """Take a pending row for one send attempt; None when someone else has it.

    A conditional UPDATE, atomic on every backend: of many copies of one
    task message, exactly one moves the row from pending to sending. The
    lease is MAILER_LEASE on the database's clock; the worker's lifeline
    renews it while the attempt runs.
    """
    now, asked_at = timezone.now(), time.monotonic()
    if connection.vendor == "postgresql":
        delivery = _claim_returning(delivery_id, task_id, now=now)
    else:
        delivery = _claim_update(delivery_id, task_id, now=now)
    if delivery is not None:
        # The database set the lease after this moment: it lasts at least
        # MAILER_LEASE from here on this worker's clock (see still_held).
        delivery.held_until = asked_at + settings.MAILER_LEASE * LOCAL_FENCE_SHARE
    return delivery


def _claim_update(delivery_id: int, task_id: str, *, now: datetime) -> Delivery | None:
    claimed = Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.PENDING
    ).update(
        status=Delivery.Status.SENDING,
        waiting_for_relay=False,
        task_id=task_id,
        attempts=F("attempts") + 1,
        lease_expires_at=Now() + lease(),
        updated_at=now,
    )
    if not claimed:
        return None
    return Delivery.objects.select_related("user").get(pk=delivery_id)


def _claim_returning(
    delivery_id: int, task_id: str, *, now: datetime
) -> Delivery | None:
    """The same claim in one round trip: UPDATE ... FROM ... RETURNING the user.

    PostgreSQL only (SQLite's RETURNING cannot name the FROM table). Saves
    the SELECT after the UPDATE: about half a millisecond of worker CPU per
    mail (bench/, docs/BENCHMARKS.md). It also answers whether the address
    is on the suppression list (`delivery.listed`, read by
    `suppression.withhold`), so the send skips that round trip as well.
    """
    params = [
        Delivery.Status.SENDING.value,
        task_id,
        lease(),
        now,
        delivery_id,
        Delivery.Status.PENDING.value,
    ]
    # A raw User query converts the user's columns; the row's own come along.
    user = next(iter(get_user_model().objects.raw(_claim_sql(), params)), None)
    if user is None:
        return None
    loaded = {
        "id": delivery_id,
        "user_id": user.pk,
        "kind": user.claimed_kind,
        "status": Delivery.Status.SENDING,
        "task_id": task_id,
        "attempts": user.claimed_attempts,
        "retries": user.claimed_retries,
        "created_at": user.claimed_created_at,
        "message_id": user.claimed_message_id,
        "language": user.claimed_language,
        "despite_suppression": user.claimed_despite_suppression,
    }
    # from_db takes the loaded values in the model's field order.
    names = [f.attname for f in Delivery._meta.concrete_fields if f.attname in loaded]
    delivery = Delivery.from_db(
        connection.alias, names, [loaded[name] for name in names]
    )
    delivery.user = user
    delivery.listed = user.claimed_listed
    return delivery


@functools.cache
def _claim_sql() -> str:
    quote = connection.ops.quote_name
    delivery = quote(Delivery._meta.db_table)
    user = quote(get_user_model()._meta.db_table)
    user_columns = ", ".join(
        f"u.{quote(name)}"
        for name in ("id", "email", "password", "is_active", "activated_at")
    )
    email = quote(get_user_model()._meta.get_field("email").column)
    address = quote(Suppression._meta.get_field("address").column)
    # suppression.is_suppressed's lookup, on the user's stored address.
    listed = (
        f"EXISTS (SELECT 1 FROM {quote(Suppression._meta.db_table)} AS s "
        f"WHERE LOWER(s.{address}) = LOWER(u.{email}))"
    )
    return (
        f"UPDATE {delivery} AS d SET status = %s, waiting_for_relay = false, "
        "task_id = %s, "
        "attempts = d.attempts + 1, lease_expires_at = STATEMENT_TIMESTAMP() + %s, "
        f"updated_at = %s FROM {user} AS u WHERE d.id = %s AND d.status = %s "
        "AND u.id = d.user_id "
        f"RETURNING {user_columns}, d.kind AS claimed_kind, "
        "d.attempts AS claimed_attempts, d.retries AS claimed_retries, "
        "d.created_at AS claimed_created_at, "
        "d.message_id AS claimed_message_id, d.language AS claimed_language, "
        "d.despite_suppression AS claimed_despite_suppression, "
        f"{listed} AS claimed_listed"
    )


def send_delivery(delivery: Delivery, *, smtp: Connection) -> None:
    """Render the mail for a claimed row (by its kind) and send it on `smtp`.

    Right before DATA the attempt checks that it still holds the row (a
    fencing token): a worker frozen past its lease and resumed sends nothing.
    Raises `ClaimLost` then.
    """
    fence = functools.partial(still_held, delivery)
    smtp.send(build_message(delivery), fence=fence)


# The share of a fresh lease a worker trusts its own clock for.
LOCAL_FENCE_SHARE = 0.5


def still_held(delivery: Delivery) -> bool:
    """The fence: whether a claimed row is still this attempt's, right now.

    Only the rescue takes a sending row, and only once its lease has run out.
    A claim made less than half a lease ago (on the monotonic clock, which
    keeps counting while a process is frozen) cannot have run out, so it
    needs no query: that saves an UPDATE per mail. Later, the database
    decides and the lease is renewed (hold_claim).
    """
    if time.monotonic() < getattr(delivery, "held_until", 0.0):
        return True
    return hold_claim(delivery_id=delivery.pk, task_id=delivery.task_id)


def hold_claim(*, delivery_id: int, task_id: str) -> bool:
    """Renew an attempt's lease if it still holds the row; False if it lost it.

    The lease must not have run out: a row past its lease may already be
    another worker's, even before the rescue has moved it.
    """
    return bool(
        _claimed_by(delivery_id, task_id)
        .filter(lease_expires_at__gt=Now())
        .update(lease_expires_at=Now() + lease())
    )


def mark_sent(*, delivery_id: int, task_id: str) -> bool:
    """Record a delivery the relay accepted; False if the claim was lost.

    The same conditional UPDATE as the other marks, in SQL written once: run
    once per mail, the ORM's compiling of it cost two thirds of the mark's
    worker CPU (1.47 against 0.49 ms, in-process on PostgreSQL).
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params = [
        Delivery.Status.SENT.value,
        now,
        now,
        delivery_id,
        Delivery.Status.SENDING.value,
        task_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_mark_sent_sql(), params)
        return cursor.rowcount > 0


@functools.cache
def _mark_sent_sql() -> str:
    quote = connection.ops.quote_name
    column = {f.name: quote(f.column) for f in Delivery._meta.concrete_fields}
    return (
        f"UPDATE {quote(Delivery._meta.db_table)} SET {column['status']} = %s, "
        f"{column['sent_at']} = %s, {column['smtp_code']} = 250, "
        f"{column['last_error']} = '', {column['updated_at']} = %s "
        f"WHERE {column['id']} = %s AND {column['status']} = %s "
        f"AND {column['task_id']} = %s"
    )


def mark_retrying(
    *, delivery_id: int, task_id: str, countdown: float, code: int | None, reason: str
) -> None:
    """Hand a claimed row back to pending until its retry is due; count it.

    If the retry's message is lost, the row is due MAILER_LEASE after the
    retry would have run.
    """
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.PENDING,
        retries=F("retries") + 1,
        smtp_code=code,
        last_error=reason,
        lease_expires_at=Now() + timedelta(seconds=countdown) + lease(),
        updated_at=timezone.now(),
    )


def requeue_throttled(
    *, delivery_id: int, task_id: str, countdown: float, code: int | None, reason: str
) -> bool:
    """Hand a claimed row back to pending after the relay throttled; no retry spent.

    Like `mark_retrying` without counting a retry: the task's copy due in
    `countdown` seconds claims it again. False if the claim was lost.
    """
    return bool(
        _claimed_by(delivery_id, task_id).update(
            status=Delivery.Status.PENDING,
            smtp_code=code,
            last_error=reason,
            lease_expires_at=Now() + timedelta(seconds=countdown) + lease(),
            updated_at=timezone.now(),
        )
    )


def hold_while_throttled(*, delivery_id: int, countdown: float) -> None:
    """Keep an unclaimed pending row out of the rescue while its copy waits.

    A mail sent back unclaimed (no rate turn, no connection slot, a relay
    refusing one more connection) comes back in `countdown` seconds; until
    then its row must not look left behind, or the lifeline would publish a
    second copy behind the queue and the mail would lose its place.
    """
    Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING).update(
        lease_expires_at=Now() + timedelta(seconds=countdown) + lease()
    )


def park_for_relay(
    *, delivery_id: int, task_id: str | None, code: int | None, reason: str
) -> bool:
    """Set a row aside until the relay answers again, spending no retry.

    A claimed row (`task_id` given) goes back from sending; an unclaimed one
    is parked as it is. The lease is the backstop if no release ever comes:
    MAILER_STALE_AFTER, and at least the longest probe interval, so that a
    parked row is not re-dispatched while the relay is still being probed.
    False if the row was neither (sent, or someone else's).
    """
    backstop = max(
        settings.MAILER_STALE_AFTER, settings.MAILER_RELAY_PROBE_INTERVAL_MAX
    )
    if task_id is None:
        rows = Delivery.objects.filter(pk=delivery_id, status=Delivery.Status.PENDING)
    else:
        rows = _claimed_by(delivery_id, task_id)
    return bool(
        rows.update(
            status=Delivery.Status.PENDING,
            waiting_for_relay=True,
            smtp_code=code,
            last_error=reason,
            lease_expires_at=Now() + timedelta(seconds=backstop),
            updated_at=timezone.now(),
        )
    )


def mark_failed(
    *, delivery_id: int, task_id: str, code: int | None, reason: str
) -> None:
    """Record a delivery that will not be retried, with the relay's reason."""
    _claimed_by(delivery_id, task_id).update(
        status=Delivery.Status.FAILED,
        smtp_code=code,
        last_error=reason,
        updated_at=timezone.now(),
    )


def _claimed_by(delivery_id: int, task_id: str):
    return Delivery.objects.filter(
        pk=delivery_id, status=Delivery.Status.SENDING, task_id=task_id
    )

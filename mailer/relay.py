"""The relay's health, shared by every worker: down, probed, back.

A relay-wide failure (connection refused or dropped, a timeout, a 421 with
no connection of ours working) is not any one mail's fault. The first one
marks the relay down in the `RelayState` row; from then on, sends are parked
without a connection and without spending their retries, and one worker at
a time probes the relay (connect, EHLO, MAIL FROM, RCPT TO). A relay that
throttles (mailer/budget.py) answers: it is never marked down, and a probe
it throttles counts as an answer.

A probe cannot send DATA, and a relay that answers it may still drop every
connection after the data (a full disk, a crashing content filter). So a
probe that is answered lets one parked mail through as a trial, and the
relay stays down for the rest. Trials take the parked mails in turn,
oldest first, so a mail the relay drops for its own sake (a content
filter that crashes on it) holds up no other. A mail accepted, the trial
or any other, releases every parked mail at once. A trial that fails
again costs one attempt, not one per parked mail (each of which, dropped
after DATA, might have reached the relay: a possible duplicate), and it
is not a new outage, so the next probe comes at the same interval. Once
every parked mail has failed its trial, the next round comes at twice
the interval, as after a new outage: a long outage tries each of a few
parked mails a few times, not at every probe.
"""

import logging
from datetime import timedelta
from email.utils import parseaddr

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from mailer import leases, metrics, sweeper
from mailer.models import RelayState
from mailer.pool import NoBudget, probe_relay
from mailer.smtp import classify_smtp_error

logger = logging.getLogger(__name__)

STATE_ID = 1


class _Belief:
    """What this process last saw of the relay; the row is the truth.

    One object shared by the worker's threads: plain flags, set and read whole.
    """

    down = False
    delivered = False  # a mail went out since the lifeline last looked


_belief = _Belief()


def relay_is_down(delivery_id: int | None = None) -> bool:
    """Whether a send should be parked; asks the database only while down.

    The trial mail a probe let through (`delivery_id` is its row) goes on.
    """
    if not _belief.down:
        return False
    state = refresh()
    if state is None:
        return False
    return delivery_id is None or state.trial_delivery_id != delivery_id


def refresh() -> RelayState | None:
    """Read the shared state into this process; the row if the relay is down."""
    state = RelayState.objects.filter(pk=STATE_ID, down_since__isnull=False).first()
    _belief.down = state is not None
    return state


def forget_belief() -> None:
    """Drop what this process believed of the relay (tests; a new process)."""
    _belief.down = False
    _belief.delivered = False


def note_down(reason: str) -> None:
    """Mark the relay down after a relay-wide failure; log it once, globally."""
    _belief.down = True
    state, _ = RelayState.objects.get_or_create(pk=STATE_ID)
    first_probe = Now() + timedelta(seconds=probe_interval(state.outages + 1))
    taken = RelayState.objects.filter(pk=STATE_ID, down_since__isnull=True).update(
        down_since=Now(),
        reason=reason[:500],
        probe_due_at=first_probe,
        outages=F("outages") + 1,
    )
    metrics.record_relay_state(up=False)
    if taken:
        logger.warning(
            "relay down: %s; parking mails until a probe or a send succeeds", reason
        )


def note_delivered() -> None:
    """Count a mail the relay accepted: a sign that it is up."""
    _belief.delivered = True
    if _belief.down:
        note_up(sign="a mail was accepted")


def note_up(*, sign: str) -> int:
    """Clear the down mark and release the parked mails; return how many.

    Whoever clears the mark logs the outage's end; every caller releases,
    which is harmless when there is nothing parked.
    """
    _belief.down = False
    metrics.record_relay_state(up=True)
    state = RelayState.objects.filter(pk=STATE_ID, down_since__isnull=False).first()
    with transaction.atomic():  # a crash in between must not strand parked mails
        cleared = state is not None and bool(
            RelayState.objects.filter(pk=STATE_ID, down_since__isnull=False).update(
                down_since=None, reason="", probe_due_at=None, trial_delivery_id=None
            )
        )
        released = leases.release_parked()
    if cleared:
        lasted = (timezone.now() - state.down_since).total_seconds()
        logger.warning(
            "relay back after %.1f s (%s): %d parked mails released",
            lasted,
            sign,
            released,
        )
    if released:
        sweeper.sweep_stale_deliveries()
    return released


def note_answered(*, sign: str) -> int | None:
    """The relay answered a probe: let one parked mail through as a trial.

    Returns the trial's row, or None when nothing was parked and the relay
    is simply marked up. The trial is the oldest parked row after the last
    trial, wrapping round to the oldest.
    """
    last = RelayState.objects.filter(pk=STATE_ID).values_list(
        "trial_delivery_id", flat=True
    )
    after = last.first()
    trial = leases.release_next_parked(after=after)
    if trial is None:
        note_up(sign=sign)
        return None
    # Back at the oldest: every parked mail failed its trial in this round.
    # Each may have reached the relay before it dropped the line, so the
    # next round comes at twice the interval, as a new outage's would.
    another_round = after is not None and trial <= after
    RelayState.objects.filter(pk=STATE_ID, down_since__isnull=False).update(
        trial_delivery_id=trial,
        outages=F("outages") + int(another_round),
    )
    logger.warning(
        "relay answers (%s): delivery %s goes first as a trial; "
        "the other parked mails follow once the relay accepts a mail",
        sign,
        trial,
    )
    sweeper.sweep_stale_deliveries()
    return trial


def forget_outages() -> None:
    """After mails went out again, probe a future outage at the base interval."""
    if _belief.delivered:
        _belief.delivered = False
        RelayState.objects.filter(pk=STATE_ID, outages__gt=0).update(outages=0)


def probe_interval(outages: int) -> float:
    """Seconds between probes, doubling with each outage since mails last went out.

    A relay that answers the probe and then drops every mail is probed less
    and less often, up to MAILER_RELAY_PROBE_INTERVAL_MAX.
    """
    return min(
        settings.MAILER_RELAY_PROBE_INTERVAL * 2 ** max(outages - 1, 0),
        settings.MAILER_RELAY_PROBE_INTERVAL_MAX,
    )


def take_probe(state: RelayState) -> bool:
    """Claim the next probe for this process, if one is due; at most one at a time."""
    interval = timedelta(seconds=probe_interval(state.outages))
    return bool(
        RelayState.objects.filter(
            pk=STATE_ID, down_since__isnull=False, probe_due_at__lte=Now()
        ).update(probe_due_at=Now() + interval)
    )


def probe() -> bool:
    """Probe the relay; when it answers, let a trial mail through (note_answered)."""
    sender = parseaddr(settings.DEFAULT_FROM_EMAIL)[1]
    recipient = f"postmaster@{sender.rpartition('@')[2] or 'localhost'}"
    try:
        probe_relay(sender=sender, recipient=recipient)
    except NoBudget:  # slots held by connections still hanging: not proof
        logger.info("relay probe waits: every connection slot is taken")
        return False
    except OSError as error:  # every smtplib error, refused, timed out
        if not classify_smtp_error(error).throttled:
            logger.info("relay probe failed: %s", error or type(error).__name__)
            return False
        note_answered(sign="probe throttled")
        return True
    note_answered(sign="probe answered")
    return True

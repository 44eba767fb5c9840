from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django_celery_results.models import TaskResult

from mailer.results import UpsertTaskResultManager
from users.languages import default_language, language_choices


class Delivery(models.Model):
    """One mail owed to one user: the outbox row, the record of its delivery."""

    class Kind(models.TextChoices):
        WELCOME = "welcome", "Welcome"
        # To an address someone registered again: no second account was made.
        ACCOUNT_EXISTS = "account_exists", "Account exists notice"
        # A new activation link the person asked for.
        ACTIVATION = "activation", "Activation link"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        # Not sent: the address is on the suppression list (mailer/suppression.py).
        SUPPRESSED = "suppressed", "Suppressed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deliveries"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    # The user's language when the row was written: the mail renders in it.
    language = models.CharField(
        max_length=15, choices=language_choices, default=default_language
    )
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    # Transient failures of this mail (greylisting, a 4xx for it): the retry
    # budget, kept on the row so a re-dispatch does not reset it. A relay-wide
    # outage does not count here.
    retries = models.PositiveIntegerField(default=0)
    # Parked while the relay is down; released when a probe or a send succeeds.
    waiting_for_relay = models.BooleanField(default=False)
    task_id = models.CharField(max_length=255, blank=True, db_index=True)
    message_id = models.CharField(max_length=255, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # Set by `resend_failed --include-suppressed`: send despite the list.
    despite_suppression = models.BooleanField(default=False)
    # When a pending or sending row counts as left behind (the sweeper's cue),
    # on the database's clock. A worker renews it every heartbeat while it
    # holds the row's message or attempt (mailer/lifeline.py).
    lease_expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            # One welcome mail per person; notices and resends may repeat
            # (limited by create_repeatable_delivery).
            models.UniqueConstraint(
                fields=["user", "kind"],
                condition=models.Q(kind="welcome"),
                name="mailer_delivery_one_welcome_per_user",
            ),
        ]
        indexes = [
            models.Index(
                fields=["user", "kind", "created_at"],
                name="mailer_delivery_recent_idx",
            ),
            # The sweeper and the lifeline look only at unfinished rows: on an
            # outbox of millions, almost all sent, these stay small.
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status="pending"),
                name="mailer_delivery_pending_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status="sending"),
                name="mailer_delivery_sending_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} mail #{self.pk} ({self.status})"


class RelayState(models.Model):
    """Whether the SMTP relay is down, shared by every worker: one row.

    A relay-wide failure (refused, dropped, timed out, 421) marks it down;
    sends are parked instead of spending their retries, and one worker at a
    time probes the relay every MAILER_RELAY_PROBE_INTERVAL seconds.
    """

    down_since = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    # When the next probe is due; pushed ahead by whoever takes the probe.
    probe_due_at = models.DateTimeField(null=True, blank=True)
    # Outages since the last delivered mail: a relay that goes down again
    # right after each probe is probed less and less often.
    outages = models.PositiveIntegerField(default=0)
    # The parked mail the last answered probe let through while the relay
    # is still down (mailer/relay.py: a probe cannot test DATA).
    trial_delivery_id = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return "relay down" if self.down_since else "relay up"


class TaskResultRecord(TaskResult):
    """django-celery-results' table, written one statement per state."""

    objects = UpsertTaskResultManager()

    class Meta:
        proxy = True


class Suppression(models.Model):
    """An address no mail goes to: it bounced, complained, or an admin said so.

    Keyed by the address, not the user: it outlives the account, so a person
    who signs up again with a dead address is not mailed again.
    """

    class Reason(models.TextChoices):
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        COMPLAINT = "complaint", "Complaint"
        MANUAL = "manual", "Manual"

    class Source(models.TextChoices):
        SMTP = "smtp", "SMTP reply"
        # The ESP's API refused the recipient when the mail was handed over.
        ESP_API = "esp_api", "ESP API"
        WEBHOOK = "webhook", "ESP webhook event"
        ADMIN = "admin", "Admin"

    # Normalized as registration normalizes it; unique in any letter case.
    address = models.EmailField(max_length=254)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    source = models.CharField(max_length=20, choices=Source.choices)
    # The SMTP code and text, or the ESP's name and event id.
    evidence = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Lower("address"), name="mailer_suppression_address_ci_unique"
            ),
        ]

    def __str__(self) -> str:
        return self.address


class TrackingEvent(models.Model):
    """A bounce or complaint an ESP reported: stored once per event id."""

    esp_name = models.CharField(max_length=50)
    # The ESP's event id, or a digest of the event when the ESP sends none.
    event_id = models.CharField(max_length=255)
    event_type = models.CharField(max_length=30)
    reject_reason = models.CharField(max_length=30, blank=True)
    recipient = models.EmailField(max_length=254, blank=True)
    # The outbox row the mail came from, read from its anymail metadata.
    delivery = models.ForeignKey(
        Delivery,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tracking_events",
    )
    description = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["esp_name", "event_id"], name="mailer_trackingevent_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.esp_name} {self.event_type} {self.event_id}"

from django.conf import settings
from django.db import models
from django_celery_results.models import TaskResult

from mailer.results import UpsertTaskResultManager


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

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="deliveries"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True, db_index=True)
    message_id = models.CharField(max_length=255, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # When a pending or sending row counts as left behind (the sweeper's cue).
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
            models.Index(
                fields=["status", "lease_expires_at"], name="mailer_delivery_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} mail #{self.pk} ({self.status})"


class TaskResultRecord(TaskResult):
    """django-celery-results' table, written one statement per state."""

    objects = UpsertTaskResultManager()

    class Meta:
        proxy = True

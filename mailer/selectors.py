"""Read-only queries that health, metrics, the admin and commands share."""

import json

from django.utils import timezone
from django_celery_results.models import TaskResult

from mailer.models import Delivery


def oldest_undelivered_age() -> float | None:
    """Seconds since the oldest pending or sending row was created; None if none."""
    oldest = (
        Delivery.objects.filter(
            status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING]
        )
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:
        return None
    return round((timezone.now() - oldest).total_seconds(), 1)


def failed_task_results(task_ids: list[str]) -> dict[str, str]:
    """Map task ids to the exception their failed django-celery-results row holds."""
    found = {}
    for start in range(0, len(task_ids), 500):
        chunk = task_ids[start : start + 500]
        for task_id, result in TaskResult.objects.filter(
            task_id__in=chunk, status="FAILURE"
        ).values_list("task_id", "result"):
            found[task_id] = _describe_exception(result)
    return found


def _describe_exception(result: str | None) -> str:
    try:
        data = json.loads(result or "")
        message = data.get("exc_message")
        if isinstance(message, list | tuple):
            message = ", ".join(map(str, message))
        return f"{data.get('exc_type', 'error')}: {message}"
    except (ValueError, AttributeError):
        return (result or "")[:200]

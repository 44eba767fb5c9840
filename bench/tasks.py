"""The floor's task: the send task's options and bookkeeping, no send."""

from celery import Task, shared_task


@shared_task(bind=True, acks_late=True)
def do_nothing(self: Task) -> str:
    """The send task's Celery options and bookkeeping, without the send."""
    return "sent"

"""The naive worker's task: the obvious version of the send, for comparison."""

from celery import Task, shared_task

from mailer import claims
from mailer.messages import build_message


@shared_task(bind=True, acks_late=True)
def send_welcome_email_naive(self: Task, delivery_id: int) -> str:
    """Claim, send over a new SMTP connection, mark sent (no retry policy)."""
    delivery = claims.claim_delivery(delivery_id=delivery_id, task_id=self.request.id)
    if delivery is None:
        return "skipped"
    build_message(delivery).send()  # connect, send, QUIT
    claims.mark_sent(delivery_id=delivery_id, task_id=self.request.id)
    return "sent"


@shared_task(bind=True, acks_late=True)
def do_nothing(self: Task) -> str:
    """The send task's Celery options and bookkeeping, without the send."""
    return "sent"

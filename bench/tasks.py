"""The floor's tasks: the send task's options and bookkeeping, no send.

`do_nothing` is the per-mail floor; `do_nothing_batched` the batched one:
on a threads worker, its requests go through Celery's default strategy to a
mailer.batching Batcher that waits for full batches of MAILER_BATCH_SIZE
(at most LINGER seconds) and settles each as a batch of sends is settled
(one result upsert, then each request's ack and events), with no claim,
send or mark. Full batches: a no-op is done long before the consumer
brings the next message, so the send tasks' Batcher, which starts a batch
at once when none runs, would run these one at a time.
"""

import time

from celery import Task, shared_task
from celery.worker import strategy as celery_strategy

from mailer import batching

LINGER = 0.05  # seconds; a batch left short at the end of a backlog waits no longer


class FullBatches(batching.Batcher):
    """A Batcher that starts a batch only once it is full or has lingered."""

    def _due(self) -> bool:
        waited = time.monotonic() - self.waiting[0][0]
        return len(self.waiting) >= self.size or waited >= self.linger


def settle_all(app, requests: list) -> None:
    """A batch of no-op tasks: every request succeeds, settled as one batch."""
    settled: set[str] = set()
    try:
        batching.settle(app, requests, {r.id: "sent" for r in requests}, settled)
    finally:
        for request in requests:
            if request.id not in settled:
                batching._run_per_mail(app, request)


def batched(task, app, consumer, **kwargs):
    """`do_nothing_batched`'s Strategy (see above); per task on other pools."""
    thread_pool = type(consumer.pool).__module__ == "celery.concurrency.thread"
    if batching.batch_size() <= 1 or not thread_pool:
        return celery_strategy.default(task, app, consumer, **kwargs)
    batcher = FullBatches(
        app, consumer, size=batching.batch_size(), linger=LINGER, send=settle_all
    )
    handing = batching._Handing(consumer, batcher)
    return celery_strategy.default(task, app, handing, **kwargs)


@shared_task(bind=True, acks_late=True, Strategy="bench.tasks:batched")
def do_nothing_batched(self: Task) -> str:
    """`do_nothing`, its requests taken and settled in batches (see above)."""
    return "sent"


@shared_task(bind=True, acks_late=True)
def do_nothing(self: Task) -> str:
    """The send task's Celery options and bookkeeping, without the send."""
    return "sent"

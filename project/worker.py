"""The worker's consumer: back on the broker within a second of it answering.

Celery's consumer reconnects through kombu's `ensure_connection` with its
built-in intervals (2 s, then 2 s more each try, up to 30 s): after a minute
without Redis, a worker could sit idle for 16 s after Redis came back. The
mails published meanwhile would wait that long. This consumer retries every
`RECONNECT_INTERVAL` seconds instead; a refused connection costs nothing.
"""

from functools import partial

from celery.worker.consumer import Consumer as CeleryConsumer

RECONNECT_INTERVAL = 1.0  # seconds


class Consumer(CeleryConsumer):
    """Celery's consumer with a short, flat reconnect interval."""

    def ensure_connected(self, conn):
        conn.ensure_connection = partial(
            conn.ensure_connection,
            interval_start=RECONNECT_INTERVAL,
            interval_step=0,
            interval_max=RECONNECT_INTERVAL,
        )
        return super().ensure_connected(conn)

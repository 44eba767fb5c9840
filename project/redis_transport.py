"""kombu's Redis transports, keeping one redis-py client per connection pool.

kombu's Redis channel builds a new `redis.Redis` for every command it sends
outside its consumer loop (`Channel.conn_or_acquire`): per mail a worker
builds five (the unacked bookkeeping, the ack, three task events) and a
registration two (the task, its sent event). redis-py fills a 165-entry
response-callback table in every `Redis()` (redis/redis-py#3624), about
50 µs here, so that was about 0.2 ms of worker CPU per mail (`make bench`).
A client is only a handle on its pool and is safe to share between threads,
so each channel keeps one for as long as it keeps that pool.
"""

import redis as redis_py
from kombu.transport import redis


class SharedClientMixin:
    """Hand out one synchronous client per connection pool.

    A channel closed after its connection failed has no connection info
    left to build a pool from: its transport connection lost its client
    (the consumer restoring its unacknowledged messages while Redis
    restarts), or the channel lost its transport connection altogether
    (kombu's `close_channel`; a task that finished while the worker was
    frozen through a Redis restart is acked on it once the worker resumes).
    kombu then raised AttributeError, which the consumer's loop lets
    through and the worker died of. A connection error instead is what
    kombu expects: the ack is logged as failed, the consumer reconnects; the
    messages stay in Redis' unacked set (or were lost with it), and the
    lifeline re-dispatches their rows.
    """

    _shared_client = None

    def _create_client(self, asynchronous=False):
        connection = self.connection
        if connection is None or connection.client is None:
            raise redis_py.ConnectionError("the channel's connection is closed")
        if asynchronous:  # the consumer loop's own BRPOP/SUBSCRIBE client
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Channel(SharedClientMixin, redis.Channel):
    pass


class Transport(redis.Transport):
    """`redis://` and `rediss://` URLs."""

    Channel = Channel


class SentinelChannel(SharedClientMixin, redis.SentinelChannel):
    pass


class SentinelTransport(redis.SentinelTransport):
    """`sentinel://` URLs."""

    Channel = SentinelChannel


def transport_for(url: str) -> str:
    """The `broker_transport` for a Redis broker URL: it overrides the scheme's."""
    name = "SentinelTransport" if url.startswith("sentinel://") else "Transport"
    return f"{__name__}:{name}"

import pytest
from django.conf import settings
from kombu.transport import redis as kombu_redis

from celery_app import app
from project import redis_transport
from project.redis_transport import transport_for


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", redis_transport.Transport),
        ("rediss://:secret@redis.internal:6380/0", redis_transport.Transport),
        (
            "sentinel://s1:26379;sentinel://s2:26379/0",
            redis_transport.SentinelTransport,
        ),
    ],
)
def test_each_redis_scheme_gets_kombus_transport_with_a_shared_client(url, transport):
    with app.connection_for_write(url, transport=transport_for(url)) as connection:
        assert connection.get_transport_cls() is transport
    stock = {
        redis_transport.Transport: kombu_redis.Transport,
        redis_transport.SentinelTransport: kombu_redis.SentinelTransport,
    }[transport]
    assert issubclass(transport, stock)
    assert issubclass(transport.Channel, stock.Channel)


def test_the_app_publishes_through_the_transport_its_url_needs():
    assert settings.CELERY_BROKER_TRANSPORT == transport_for(settings.REDIS_URL)
    with app.connection_for_write() as connection:
        assert connection.get_transport_cls() is redis_transport.Transport


def test_a_channel_keeps_one_client_until_it_drops_its_pool(redis_server):
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        first = channel._create_client()

        assert channel._create_client() is first
        assert first.ping()
        assert channel._create_client(asynchronous=True) is not first

        channel._disconnect_pools()  # what kombu does after a connection error
        renewed = channel._create_client()
        assert renewed is not first
        assert renewed.connection_pool is channel.pool
        assert renewed.ping()


def test_a_channel_closed_after_its_broker_went_away_fails_as_a_connection_error(
    redis_server,
):
    # Celery's consumer closes the channel with kombu's ignore_errors(), which
    # swallows connection errors only: an AttributeError here killed workers
    # when Redis restarted with messages unacknowledged (kombu #582, #970).
    connection = app.connection_for_write()
    channel = connection.default_channel
    channel._disconnect_pools()
    channel.connection.client = None  # the transport, detached from its Connection

    with pytest.raises(tuple(connection.connection_errors)):
        channel._create_client()


def test_an_ack_on_a_channel_its_transport_closed_fails_as_a_connection_error(
    redis_server,
):
    # A task that finished while its worker was frozen through a Redis
    # restart is acked once the worker resumes, on a channel kombu's
    # close_channel() has detached from its transport: an AttributeError
    # there was an "Unrecoverable error" that killed the worker.
    connection = app.connection_for_write()
    channel = connection.default_channel
    connection.transport.close_channel(channel)

    with pytest.raises(tuple(connection.connection_errors)):
        channel.basic_ack("a-delivery-tag")

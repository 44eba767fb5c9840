"""The sweep figure's bulk load writes every column: new ones get their defaults."""

from collections import Counter

import pytest
from django.db import connection

from bench.fig_sweep import SERIES, insert_select, load
from mailer.models import Delivery
from users.models import User

pytestmark = pytest.mark.django_db


def test_the_load_fills_unlisted_columns_with_the_model_defaults():
    load(2_000)

    assert User.objects.count() == 2_000
    deliveries = Delivery.objects.all()
    assert deliveries.count() == 2_000
    defaults = Delivery()
    for field in ("retries", "language", "despite_suppression", "waiting_for_relay"):
        assert {getattr(d, field) for d in deliveries} == {getattr(defaults, field)}
    assert Counter(deliveries.values_list("status", flat=True)) == {
        "sent": 1_994,
        "pending": 2,
        "sending": 2,
        "failed": 2,
    }


def test_a_column_without_default_must_be_given():
    series = SERIES[connection.vendor]

    with pytest.raises(ValueError, match="Delivery.user"):
        insert_select(Delivery, {"id": ("n", [])}, series, connection)


def test_a_given_column_the_model_lacks_is_refused():
    series = SERIES[connection.vendor]

    with pytest.raises(ValueError, match="no column retried"):
        insert_select(User, {"id": ("n", []), "retried": ("0", [])}, series, connection)

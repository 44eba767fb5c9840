import pytest
from django.conf import settings
from django.urls import Resolver404, resolve


def test_inline_baseline_is_not_served_by_the_app():
    with pytest.raises(Resolver404):
        resolve("/bench/inline-register")
    assert "bench" not in settings.INSTALLED_APPS

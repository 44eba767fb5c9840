"""Read a Prometheus text page the way Prometheus would."""

import base64

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a page, keyed by (name, its labels as a frozenset)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value by name and exact labels; None when it is absent."""
    return samples(text).get((name, frozenset(labels.items())))


def basic_auth(login: str) -> str:
    """An Authorization header value for `user:password`."""
    return "Basic " + base64.b64encode(login.encode()).decode()

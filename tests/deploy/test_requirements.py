"""The Django 6.1 leg tests the shipped set: its pins differ only in Django."""

from tests.support import ROOT


def pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text().splitlines()
    return {
        package.lower().replace("_", "-"): version
        for line in lines
        if line and not line.startswith("#")
        for package, version in [line.split("==")]
    }


def test_the_django61_pins_are_the_dev_pins_with_django_61():
    default, leg = pins("requirements-dev.txt"), pins("requirements-django61.txt")

    assert default.pop("django").startswith("5.2.")
    assert leg.pop("django").startswith("6.1.")
    assert leg == default


def test_every_runtime_pin_is_a_dev_pin():
    runtime, dev = pins("requirements.txt"), pins("requirements-dev.txt")

    assert runtime.items() <= dev.items()

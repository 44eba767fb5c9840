"""A failing figure: one line on the page, its traceback in a log, exit 1."""

from bench.__main__ import exit_status, failed_section
from bench.harness import Target


def broken_figure():
    raise RuntimeError("sweep figure on SQLite:\nNOT NULL constraint failed")


def test_a_failed_figure_is_one_line_on_the_page_and_its_traceback_in_the_log(
    tmp_path,
):
    log = tmp_path / "var" / "bench-failures.log"
    try:
        broken_figure()
    except RuntimeError as exc:
        text, targets = failed_section("sweep", exc, log)

    assert text == (
        "## sweep: failed\n\nThe sweep figure failed: "
        "RuntimeError: sweep figure on SQLite: ... NOT NULL constraint failed.\n"
    )
    assert "Traceback" not in text
    assert [t.met for t in targets] == [False]
    logged = log.read_text()
    assert logged.startswith("== sweep ")
    assert "Traceback (most recent call last)" in logged
    assert "in broken_figure" in logged
    assert "NOT NULL constraint failed" in logged


def test_make_bench_fails_when_a_figure_failed(tmp_path):
    try:
        broken_figure()
    except RuntimeError as exc:
        failed = failed_section("sweep", exc, tmp_path / "log")
    measured = ("text", [Target("p99 <= 1 s", "2 s", False)])

    assert exit_status({"latency": measured, "sweep": failed}) == 1


def test_unmet_targets_alone_do_not_fail_make_bench():
    measured = ("text", [Target("p99 <= 1 s", "2 s", False), Target("x", "-", None)])

    assert exit_status({"latency": measured, "hashing": ("text", [])}) == 0

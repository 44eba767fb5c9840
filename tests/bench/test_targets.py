"""The issue's restated targets, as the figures judge them from their runs."""

from bench import fig_registration, fig_resend
from bench.stats import Runs


def registration(rps_0, rps_200, inline_200, p99_0, p99_2):
    def row(rps, p99):
        return {"rps": Runs([rps]), "p50": Runs([p99 / 2]), "p99": Runs([p99])}

    rows = {
        "project, relay 0 ms": row(rps_0, p99_0),
        "project, relay 200 ms": row(rps_200, p99_0),
        "inline baseline, relay 200 ms": row(inline_200, 5000),
        "project, relay 2 s": row(rps_0, p99_2),
    }
    data = {"rows": rows, "count": 200, "inline": 100, "runs": 1}
    text, targets = fig_registration.section(data)
    return text, {t.name.split(" at ")[0]: t for t in targets}


def test_a_slower_relay_must_not_make_registration_p99_worse_than_1_1x():
    _, within = registration(10, 10, 1, p99_0=1000, p99_2=1100)
    _, worse = registration(10, 10, 1, p99_0=1000, p99_2=1101)
    _, better = registration(10, 10, 1, p99_0=1000, p99_2=500)

    name = "Registration p99"
    assert within[name].met and better[name].met
    assert not worse[name].met
    assert worse[name].measured.startswith("1.10x (1101 vs 1000 ms)")


def test_requests_per_second_at_200_ms_must_be_0_9x_those_at_0_ms():
    text, kept = registration(rps_0=10, rps_200=9, inline_200=1.5, p99_0=1, p99_2=1)
    _, lost = registration(rps_0=10, rps_200=8.9, inline_200=1.5, p99_0=1, p99_2=1)

    assert kept["Requests/s"].met
    assert not lost["Requests/s"].met
    assert "inline baseline at 200 ms: 6.0x less" in kept["Requests/s"].measured
    assert "0.90x the same app's at 0 ms" in text


def resend(seconds, bare):
    data = {
        "seconds": Runs(seconds),
        "bare": Runs(bare),
        "queued": [10_000] * len(seconds),
        "bare_queued": [10_000] * len(bare),
        "rows": 10_000,
        "runs": len(seconds),
    }
    return fig_resend.section(data)


def test_reruns_must_take_at_most_1_5x_a_bare_publish_of_as_many_messages():
    text, [met] = resend([3.0, 2.9, 3.1], [2.0, 2.1, 1.9])
    _, [unmet] = resend([3.1, 3.2, 3.3], [2.0, 2.1, 1.9])

    assert met.met and met.measured == "1.50x (3.00 vs 2.00 s)"
    assert not unmet.met
    assert "| bare publish, 10000 messages | 2.00 (1.90-2.10) |" in text


def throughput(ours_queue, ours_send, peer_queue, peer_send):
    from bench import fig_throughput

    def row(queue, send):
        return {
            "rate": Runs([100.0]),
            "enqueue_cpu": Runs([queue]),
            "send_cpu": Runs([send]),
            "whole_cpu": Runs([queue + send]),
            "connections": Runs([2.0]),
        }

    rows = {}
    for delay in (50, 0):
        rows[("this project", delay)] = row(ours_queue, ours_send)
        rows[("post_office, docs", delay)] = row(peer_queue, peer_send)
    data = {
        "systems": [("this project", None), ("post_office, docs", "post_office")],
        "rows": rows,
        "unsent": {},
        "stale_locks": {},
        "floor": {
            "rate": Runs([500.0]),
            "cpu": Runs([3.0]),
            "count": 1000,
            "batched": {"rate": Runs([550.0]), "cpu": Runs([2.7])},
        },
        "ceiling": {
            d: {"rate": Runs([900.0]), "cpu": Runs([0.1]), "count": 40} for d in (50, 0)
        },
        "runs": 1,
        "startup": "this project: 1.00",
    }
    text, targets = fig_throughput.section(data)
    return text, {t.name.split(",")[0]: t for t in targets}


def test_whole_pipeline_cpu_adds_the_queuing_side_to_the_sending_side():
    # Cheaper to send, dearer to queue: the whole pipeline says which wins.
    _, dearer = throughput(ours_queue=2.0, ours_send=1.5, peer_queue=1.0, peer_send=2.0)
    _, cheaper = throughput(
        ours_queue=1.0, ours_send=1.5, peer_queue=1.0, peer_send=2.0
    )

    name = "Whole-pipeline CPU per mail"
    assert not dearer[name].met
    assert dearer[name].measured == "1.17x post_office, docs (3.50 vs 3.00 ms)"
    assert cheaper[name].met
    assert dearer["Worker CPU per mail (0 ms relay) <= the best peer's"].met


def test_the_batched_floor_is_set_against_the_floor_and_the_cheapest_peer():
    text, _ = throughput(ours_queue=1.0, ours_send=6.0, peer_queue=1.0, peer_send=1.8)

    assert "2.70 (2.70-2.70) ms per task, 0.90x the per-mail floor's" in text
    assert (
        "1.50x the worker CPU of a whole\nmail at post_office, docs (1.80 ms)" in text
    )


def sustained_rows(ours_steps, ours_stop, peer_steps, peer_stop):
    from bench import fig_sustained

    data = {
        "rows": {
            "this project": {"steps": ours_steps, "stop": ours_stop},
            "celery-email, 2 x 16 threads": {"steps": peer_steps, "stop": peer_stop},
        },
        "window": 60,
    }
    text, [target] = fig_sustained.section(data)
    return text, target


def test_the_sustained_rate_is_the_last_step_held_and_must_beat_every_peer():
    ours = [(25, 40.0, True), (50, 60.0, True), (75, 2400.0, False)]
    peer = [(25, 30.0, True), (50, 900.0, True), (75, 1500.0, False)]
    text, tied = sustained_rows(
        ours, "p99 2400 ms at 75/s", peer, "p99 1500 ms at 75/s"
    )
    ahead = [(25, 40.0, True), (50, 60.0, True), (75, 300.0, True)]
    _, beaten = sustained_rows(ahead + [(110, 5000.0, False)], "p99", peer, "p99")

    assert not tied.met  # equal is not above
    assert tied.measured.startswith("50/s vs 50/s (celery-email, 2 x 16 threads)")
    assert (
        "| this project | 50 | 25: 40, 50: 60, 75: 2400 | - | p99 2400 ms at 75/s |"
        in text
    )
    assert beaten.met and beaten.measured.startswith("75/s vs 50/s")


def test_a_step_the_driver_could_not_keep_to_does_not_count_as_held():
    from bench import fig_sustained

    result = {
        "steps": [(25, 40.0, True), (50, 45.0, False)],
        "stop": "the driver, 3.0 s behind at 50/s",
    }

    assert fig_sustained.sustained(result) == 25


def mail_path(added: float, connected: float):
    from bench import fig_mail_path

    runs = Runs([connected])
    data = {
        "rounds": {"connected": runs, "disconnected": Runs([connected - added])},
        "medians": {"connected": connected, "disconnected": connected - added},
        "added": added,
        "requests": 400,
        "rounds_count": 40,
        "block": 10,
    }
    _, [target] = fig_mail_path.section(data)
    return target


def test_the_mail_path_may_add_at_most_4_percent_to_a_registration():
    assert mail_path(added=1.20, connected=30.0).met  # 4.0%
    assert not mail_path(added=1.25, connected=30.0).met  # 4.2%


def test_a_step_past_the_bound_is_the_systems_limit_even_if_the_driver_lagged(
    monkeypatch,
):
    from bench import fig_sustained

    answers = {50: ([10.0] * 100, 0.0), 65: ([2000.0] * 100, 5.0)}
    monkeypatch.setattr(
        fig_sustained,
        "measure_at",
        lambda bench, system, n, *, rate, drivers: answers[rate],
    )

    result = fig_sustained.climb(None, None, 60)

    assert result["stop"] == "p99 2000 ms at 65/s (the driver 5.0 s behind)"
    assert fig_sustained.sustained(result) == 50
    _, target = sustained_rows(result["steps"], result["stop"], [(50, 9.0, True)], "")
    assert "load generator" not in target.measured


def test_a_probed_rate_counts_only_once_held_for_the_whole_window(monkeypatch):
    from bench import fig_sustained

    calls = []

    def measure_at(bench, system, count, *, rate, drivers):
        calls.append((rate, count // rate))
        held = rate <= 80 if count // rate == 10 else rate <= 65  # a slow backlog
        return [10.0 if held else 1500.0] * 100, 0.0

    monkeypatch.setattr(fig_sustained, "measure_at", measure_at)

    result = fig_sustained.climb(None, None, 60, probe=10)

    assert calls == [(50, 10), (65, 10), (80, 10), (100, 10), (80, 60), (65, 60)]
    assert result["probes"] == [
        (50, 10.0, True), (65, 10.0, True), (80, 10.0, True), (100, 1500.0, False)
    ]  # fmt: skip
    assert result["steps"] == [(80, 1500.0, False), (65, 10.0, True)]
    assert fig_sustained.sustained(result) == 65
    assert result["stop"] == "p99 1500 ms at 100/s; held for 60 s: p99 1500 ms at 80/s"


def test_quick_probes_are_the_steps_when_the_window_is_no_longer(monkeypatch):
    from bench import fig_sustained

    calls = []

    def measure_at(bench, system, count, *, rate, drivers):
        calls.append(rate)
        return [10.0 if rate <= 65 else 1500.0] * 100, 0.0

    monkeypatch.setattr(fig_sustained, "measure_at", measure_at)

    result = fig_sustained.climb(None, None, 10, probe=10)

    assert calls == [50, 65, 80]
    assert fig_sustained.sustained(result) == 65 and result["probes"] == []

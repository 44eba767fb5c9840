"""Figure: `manage.py resend_failed` over 10,000 failed rows, no worker running.

python -m bench.fig_resend --publish 10000   (the bare-publish baseline)
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from email.utils import make_msgid

from bench.harness import Target, render, table_rows
from bench.processes import ROOT
from bench.stats import Runs

TEXT = """
## `resend_failed` dispatch rate

`python manage.py resend_failed --limit $count` over $count failed rows, $runs
runs (rows reset to failed and the queue emptied between runs), no worker
consuming. Wall time of the whole command, Django start-up included. Beside
it, interleaved, the same Celery app publishing $count bare messages
(bench/tasks.py `do_nothing`, no row read or written) from a process of its
own, start-up included: what any dispatch of that many tasks costs.

| what | seconds | per second | messages in the queue after each run |
| --- | --- | --- | --- |
$rows
"""


def publish(count: int) -> None:
    """Publish `count` bare messages from the project's Celery app."""
    import django

    django.setup()
    from bench.tasks import do_nothing

    for _ in range(count):
        do_nothing.apply_async()


def failed_rows(emails: list[str]) -> list[int]:
    """Users and failed welcome rows, in one transaction; their ids."""
    from django.contrib.auth.hashers import make_password
    from django.db import transaction
    from django.utils import timezone

    from bench.load import PASSWORD
    from mailer.models import Delivery
    from users.models import User

    hashed, lease = make_password(PASSWORD), timezone.now() + timedelta(minutes=5)
    failed = {"kind": Delivery.Kind.WELCOME, "status": Delivery.Status.FAILED}
    failed.update(lease_expires_at=lease, attempts=1, smtp_code=550)
    with transaction.atomic():
        users = [User(email=e, password=hashed) for e in emails]
        rows = Delivery.objects.bulk_create(
            [
                Delivery(
                    user=user, task_id=str(uuid.uuid4()), **failed,
                    message_id=make_msgid(domain="bench.example"),
                    last_error="550 mailbox unavailable",
                )
                for user in User.objects.bulk_create(users, batch_size=1000)
            ],
            batch_size=1000,
        )  # fmt: skip
    return [row.pk for row in rows]


def run(bench) -> dict:
    from mailer.models import Delivery

    bench.stop_project_worker()  # measure dispatch, not sending
    count = bench.size(10_000, 1_000)
    ids = failed_rows(bench.emails("resend", count))
    client = bench.stack.redis()
    seconds, queued, bare, bare_queued = [], [], [], []
    for _ in range(bench.size(3, 2)):
        Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.FAILED)
        client.delete("celery")
        resend = [sys.executable, "manage.py", "resend_failed", "--limit", str(count)]
        seconds.append(timed(bench, resend))
        queued.append(client.llen("celery"))
        client.delete("celery")
        publisher = [sys.executable, "-m", "bench.fig_resend", "--publish", str(count)]
        bare.append(timed(bench, publisher))
        bare_queued.append(client.llen("celery"))
    client.delete("celery")
    return {
        "seconds": Runs(seconds),
        "queued": queued,
        "bare": Runs(bare),
        "bare_queued": bare_queued,
        "rows": count,
        "runs": len(seconds),
    }


def timed(bench, argv: list[str]) -> float:
    clock = time.perf_counter()
    subprocess.run(
        argv,
        cwd=ROOT,
        env=bench.stack.env(),
        capture_output=True,
        check=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - clock


def section(data) -> tuple[str, list]:
    rows, seconds, bare = data["rows"], data["seconds"], data["bare"]
    lines = [
        [
            f"resend_failed, {rows} rows",
            runs.show("{:.2f}"),
            Runs([rows / s for s in runs.values]).show("{:.0f}"),
            ", ".join(map(str, queued)),
        ]
        for runs, queued in ((seconds, data["queued"]), (bare, data["bare_queued"]))
    ]
    lines[1][0] = f"bare publish, {rows} messages"
    text = render(TEXT, count=rows, runs=data["runs"], rows=table_rows(lines))
    ratio = seconds.median / bare.median
    label = "" if rows == 10_000 else f", {rows} of each"
    return text, [
        Target(
            "10,000 reruns <= 1.5x publishing 10,000 bare messages (same app, run)",
            f"{ratio:.2f}x ({seconds.median:.2f} vs {bare.median:.2f} s{label})",
            ratio <= 1.5,
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", type=int, required=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    publish(parser.parse_args().publish)

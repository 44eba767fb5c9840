"""Figure: `manage.py resend_failed` over 10,000 failed rows, no worker running."""

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
consuming. Wall time of the whole command, Django start-up included.

| rows | seconds | rows/s | messages in the queue after each run |
| --- | --- | --- | --- |
$rows
"""


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
    seconds, queued = [], []
    for _ in range(bench.size(3, 2)):
        Delivery.objects.filter(pk__in=ids).update(status=Delivery.Status.FAILED)
        client.delete("celery")
        clock = time.perf_counter()
        subprocess.run(
            [sys.executable, "manage.py", "resend_failed", "--limit", str(count)],
            cwd=ROOT,
            env=bench.stack.env(),
            capture_output=True,
            check=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        seconds.append(time.perf_counter() - clock)
        queued.append(client.llen("celery"))
    client.delete("celery")
    return {
        "seconds": Runs(seconds),
        "queued": queued,
        "rows": count,
        "runs": len(seconds),
    }


def section(data) -> tuple[str, list]:
    rows, seconds = data["rows"], data["seconds"]
    line = [
        rows,
        seconds.show("{:.2f}"),
        Runs([rows / s for s in seconds.values]).show("{:.0f}"),
        ", ".join(map(str, data["queued"])),
    ]
    text = render(
        TEXT,
        count=rows,
        runs=data["runs"],
        rows=table_rows([line]),
    )
    scaled = seconds.median * 10_000 / rows
    label = "" if rows == 10_000 else f" (scaled from {rows})"
    return text, [
        Target(
            "10,000 reruns dispatched in <= 10 s",
            f"{scaled:.2f} s{label}",
            scaled <= 10,
        )
    ]

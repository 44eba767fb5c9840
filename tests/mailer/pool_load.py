"""Send through the SMTP pool from many threads: one worker process's load.

`python -m tests.mailer.pool_load THREADS MAILS_EACH PREFIX`, with the
suite's REDIS_URL and EMAIL_PORT in the environment (tests/mailer/test_pool.py).
"""

import os
import sys
import threading

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from django.core.mail import EmailMessage  # noqa: E402

from mailer.pool import pool  # noqa: E402


def send_all(thread: int, count: int, prefix: str) -> None:
    for n in range(count):
        message = EmailMessage(
            subject="load",
            body="load",
            from_email="no-reply@example.com",
            to=[f"{prefix}-{thread}-{n}@example.com"],
        )
        with pool.connection(wait=30) as conn:
            conn.send(message)


def main() -> None:
    threads, count, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    workers = [
        threading.Thread(target=send_all, args=(t, count, prefix))
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pool.stop()


if __name__ == "__main__":
    main()

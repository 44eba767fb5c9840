"""Queue welcome mails the way one system does, in that system's virtualenv.

    python -m bench.peers.driver --system project --count 500 --prefix p1 [--rate 50]
        [--start-at UNIX_TIME]

Creates the users in one bulk insert, then queues each welcome mail in its own
transaction, as a registration would: the project writes its outbox row and
publishes after commit (rendering waits for the worker); a peer renders the
same templates here and hands the mail to Django's mail API, whose
EMAIL_BACKEND is the peer's queue. Prints JSON: when each registration's
transaction began, the CPU this process spent queuing, per mail, and (with
--rate) how far it fell behind its schedule at worst, in seconds. With
--start-at the schedule starts then (drivers in parallel share one clock).
"""

import argparse
import json
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
PASSWORD = "correct horse battery staple 42"
SUBJECT = "Welcome! Please activate your account"  # mailer.messages.SUBJECTS


def welcome_message(user):
    """The project's welcome mail (mailer/templates/mailer/welcome.*), rendered now."""
    from django.conf import settings
    from django.core.mail import EmailMultiAlternatives
    from django.template.loader import render_to_string
    from django.urls import reverse

    from users.tokens import make_activation_token

    token = make_activation_token(user)
    context = {
        "activation_url": settings.SITE_URL
        + reverse("users:activate", kwargs={"token": token}),
        "valid_days": max(1, settings.ACCOUNT_ACTIVATION_MAX_AGE // 86400),
    }
    message = EmailMultiAlternatives(
        subject=SUBJECT,
        body=render_to_string("mailer/welcome.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
    message.attach_alternative(
        render_to_string("mailer/welcome.html", context), "text/html"
    )
    return message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--prefix", default="x")
    parser.add_argument("--tag", default="", help="relay tags, a comma list")
    parser.add_argument("--rate", type=float, help="registrations per second")
    parser.add_argument("--start-at", type=float, help="unix time of the first")
    parser.add_argument("--migrate", action="store_true")
    args = parser.parse_args()

    import django

    django.setup()
    from django.contrib.auth.hashers import make_password
    from django.core.management import call_command
    from django.db import transaction

    from users.models import User

    if args.migrate:
        call_command("migrate", verbosity=0)
    if args.system == "project":
        import celery_app  # noqa: F401 - the project's Celery app and options
        from mailer.receivers import queue_welcome_email

        def enqueue(user) -> None:
            queue_welcome_email(sender=None, user=user)
    else:
        import bench.peers.worker  # noqa: F401 - the peers' Celery app, if they use it

        def enqueue(user) -> None:
            welcome_message(user).send()

    tags = args.tag.split(",")  # cycled: "+d200,+d2500" alternates two delays
    emails = [
        f"{args.prefix}n{i}{tags[i % len(tags)]}@bench.example"
        for i in range(args.count)
    ]
    hashed = make_password(PASSWORD)
    users = User.objects.bulk_create(
        [User(email=email, password=hashed) for email in emails], batch_size=1000
    )
    began: dict[str, float] = {}
    cpu, lag = time.process_time(), 0.0
    start = args.start_at or time.time()
    for index, user in enumerate(users):
        if args.rate:
            due = start + index / args.rate
            time.sleep(max(0.0, due - time.time()))
            lag = max(lag, time.time() - due)
        began[user.email] = time.time()
        with transaction.atomic():
            enqueue(user)
    cpu_ms = (time.process_time() - cpu) * 1000 / max(1, len(users))
    answer = {"began": began, "cpu_ms": cpu_ms, "done": time.time(), "lag": lag}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()

"""The mail's bytes in-process: stock EmailMultiAlternatives vs mailer/mime.py.

    DJANGO_DEBUG=1 python -m bench.mime_cost [--mails 2000] [--rounds 7]

Builds the welcome mails once (en, de, es rows; no database), then times
`message()` + `as_bytes()` exactly as Django's SMTP backend calls them (5.2:
`message().as_bytes(linesep="\\r\\n")`; 6.1: `message(policy=SMTP).as_bytes()`),
the stock class and mailer.mime.PreparedMail alternating round by round after
a warm-up round. Prints microseconds per mail: median (min-max).
"""

import argparse
import email.policy
import os
import time
import uuid

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def wire(mail) -> bytes:
    import django

    if django.VERSION >= (6, 0):
        return mail.message(policy=email.policy.SMTP).as_bytes()
    return mail.message().as_bytes(linesep="\r\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import django

    django.setup()
    from django.core.mail import EmailMultiAlternatives

    from bench.stats import Runs
    from mailer.messages import build_message
    from mailer.models import Delivery
    from users.models import User

    user = User(pk=7, email="someone@bench.example", password="!")
    prepared = [
        build_message(
            Delivery(
                pk=i,
                user=user,
                kind=Delivery.Kind.WELCOME,
                language=("en", "de", "es")[i % 3],
                message_id=f"<{uuid.uuid4()}@bench.example>",
            )
        )
        for i in range(args.mails)
    ]
    stock = [EmailMultiAlternatives() for _ in prepared]
    for plain, mail in zip(stock, prepared, strict=True):
        plain.__dict__.update(mail.__dict__)
    mails = {"stock": stock, "mailer.mime": prepared}
    times = {name: [] for name in mails}
    for run in range(args.rounds + 1):  # the first is a warm-up
        order = list(mails) if run % 2 else list(mails)[::-1]
        for name in order:
            clock = time.perf_counter()
            for mail in mails[name]:
                wire(mail)
            if run:
                times[name].append((time.perf_counter() - clock) / args.mails * 1e6)
    for name, values in times.items():
        print(f"{name}: {Runs(values).show('{:.0f}')} us per mail")
    ratio = Runs(times["mailer.mime"]).median / Runs(times["stock"]).median
    print(f"Django {django.__version__}: {ratio:.2f}x the stock time")


if __name__ == "__main__":
    main()

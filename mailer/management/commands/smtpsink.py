"""Run a development SMTP server that prints each mail and keeps a copy."""

import time
from email import message_from_bytes, policy
from pathlib import Path

from aiosmtpd.controller import Controller
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mailer.mailers import mailer_options


class SinkHandler:
    """Accept every message; print a summary and write it to `directory`."""

    def __init__(self, directory: Path, stdout) -> None:
        self.directory = directory
        self.stdout = stdout

    async def handle_DATA(self, server, session, envelope) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        path = self.directory / f"{time.time_ns()}.eml"
        path.write_bytes(envelope.content)
        body = message.get_body(preferencelist=("plain",))
        self.stdout.write(
            f"--- mail to {', '.join(envelope.rcpt_tos)} ({path.name})\n"
            f"Subject: {message['subject']}\n\n"
            f"{body.get_content() if body else ''}\n"
        )
        return "250 Message accepted for delivery"


class Command(BaseCommand):
    help = "Run a development SMTP sink: print each mail, save it under var/mail/."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument(
            "--port", type=int, default=mailer_options().get("port", 1025)
        )
        parser.add_argument("--directory", type=Path, default=settings.VAR_DIR / "mail")

    def handle(self, *args, host: str, port: int, directory: Path, **options) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            SinkHandler(directory, self.stdout), hostname=host, port=port
        )
        try:
            controller.start()
        except OSError as error:
            raise CommandError(f"Cannot listen on {host}:{port}: {error}") from error
        self.stdout.write(f"SMTP sink on {host}:{port}, mails saved in {directory}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()

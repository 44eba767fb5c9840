"""Rerun failed mails of every kind: `python manage.py resend_failed`."""

import re
import sys
from collections import Counter
from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from mailer.dispatch import BrokerUnreachable
from mailer.models import Delivery
from mailer.rerun import (
    FailedDelivery,
    ResendInterrupted,
    ResendReport,
    UnknownDeliveries,
    resend_failed_deliveries,
)

DURATION = re.compile(r"^(\d+)([mhdw])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Command(BaseCommand):
    help = (
        "Rerun failed mails (welcome mails, account-exists notices, new "
        "activation links): every failed outbox row, or those chosen with "
        "--id/--since/--limit. Sent rows are never resent, nor rows whose "
        "address is suppressed unless --include-suppressed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--id",
            action="append",
            type=int,
            dest="ids",
            metavar="ID",
            help="Rerun this outbox row (repeatable).",
        )
        parser.add_argument(
            "--since",
            help="Only rows that failed since this ISO date/datetime or this long "
            "ago (30m, 2h, 3d, 1w).",
        )
        parser.add_argument(
            "--limit", type=int, help="Rerun at most this many rows (oldest first)."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List what would be rerun and change nothing.",
        )
        parser.add_argument(
            "--include-suppressed",
            action="store_true",
            help="Also rerun failed rows whose address is on the suppression list, "
            "and send them despite it (the address works again). The address stays "
            "suppressed for later mail: lift it in the admin for that.",
        )

    def handle(
        self,
        *args,
        ids,
        since,
        limit,
        dry_run,
        include_suppressed,
        verbosity,
        **options,
    ):
        if limit is not None and limit < 1:
            raise CommandError(f"--limit must be 1 or more, not {limit}.")
        progress = ProgressBar() if self.stdout.isatty() and not dry_run else None
        try:
            report = resend_failed_deliveries(
                ids=ids,
                since=parse_since(since) if since else None,
                limit=limit,
                dry_run=dry_run,
                progress=progress,
                include_suppressed=include_suppressed,
            )
        except UnknownDeliveries as error:
            listed = ", ".join(map(str, error.ids))
            raise CommandError(f"Unknown delivery id(s): {listed}.") from error
        except ResendInterrupted as error:
            self.write_summary(error.report)
            raise CommandError(
                f"Broker unreachable mid-run: {error.left_failed} deliveries were "
                "left failed (not marked for rerun); run the command again."
            ) from error
        except BrokerUnreachable as error:
            raise CommandError(
                "Broker unreachable: nothing was marked for rerun. Check REDIS_URL "
                "and that Redis is up."
            ) from error
        finally:
            if progress is not None:
                progress.close()
        self.write_rows(report, verbosity)
        self.write_summary(report)

    def write_rows(self, report: ResendReport, verbosity: int) -> None:
        for reason, ids in report.skipped.items():
            for pk in ids:
                self.stdout.write(
                    self.style.WARNING(f"Delivery {pk}: {reason}; not resending.")
                )
        if verbosity >= 2 or (verbosity >= 1 and len(report.suppressed) <= 10):
            for pk in report.suppressed:
                self.stdout.write(
                    self.style.WARNING(
                        f"Delivery {pk}: the address is suppressed; not resending."
                    )
                )
        if (report.dry_run and verbosity >= 1) or verbosity >= 2:
            for row in report.rerun:
                self.stdout.write(describe(row))
        elif report.rerun and verbosity >= 1:
            reasons = Counter(reason_of(row) for row in report.rerun)
            for reason, count in reasons.most_common(10):
                self.stdout.write(f"  {count} x {reason}")

    def write_summary(self, report: ResendReport) -> None:
        skipped = sum(len(ids) for ids in report.skipped.values())
        why = "; ".join(
            f"{reason}: {len(ids)}" for reason, ids in report.skipped.items()
        )
        results = sum(1 for row in report.rerun if row.task_result)
        verb = "would rerun" if report.dry_run else "rerun"
        line = (
            f"{verb.capitalize()} {len(report.rerun)} failed deliveries "
            f"({results} with a failed task result), skipped {skipped}"
            + (f" ({why})" if why else "")
            + "."
        )
        if report.suppressed:
            line += (
                f" Skipped {len(report.suppressed)} failed deliveries to suppressed "
                "addresses (--include-suppressed sends them)."
            )
        if report.dry_run:
            line = f"Dry run: {line} Nothing was changed."
        if not report.rerun and not report.dry_run:
            line = f"Nothing to rerun: {line}"
        style = self.style.SUCCESS if report.rerun else self.style.NOTICE
        self.stdout.write(style(line))


def parse_since(value: str) -> datetime:
    """Read --since: an ISO date or datetime, or a duration back from now."""
    if match := DURATION.match(value.strip()):
        amount, unit = match.groups()
        return timezone.now() - timedelta(**{UNITS[unit]: int(amount)})
    try:
        moment = parse_datetime(value)
        if moment is None and (day := parse_date(value)) is not None:
            moment = datetime(day.year, day.month, day.day)
    except ValueError:
        moment = None
    if moment is None:
        raise CommandError(
            f"--since {value!r}: expected an ISO date or datetime "
            "(2026-11-24, 2026-11-24T08:00) or a duration (30m, 2h, 3d, 1w)."
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def reason_of(row: FailedDelivery) -> str:
    first_line = (row.last_error.splitlines() or ["(no error recorded)"])[0]
    return f"{row.smtp_code or '-'} {first_line[:100]}"


def describe(row: FailedDelivery) -> str:
    line = (
        f"Delivery {row.delivery_id} ({Delivery.Kind(row.kind).label.lower()}) "
        f"<{row.email}> failed "
        f"{row.failed_at:%Y-%m-%d %H:%M:%S}: {reason_of(row)}"
    )
    if row.task_result:
        line += f" | task {row.task_id}: {row.task_result}"
    return line


class ProgressBar:
    """A tqdm bar on the terminal, created when the total is known."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="mail", file=sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""System checks for mailer settings that would lose or duplicate mail."""

import logging

from celery.signals import worker_init
from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from mailer import budget

logger = logging.getLogger(__name__)


@register(Tags.compatibility)
def check_delays_below_visibility_timeout(app_configs, **kwargs) -> list[Error]:
    """Every delay the send task can ask for must end before Redis redelivers."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    visibility = options.get("visibility_timeout", 3600)
    longest = max(
        settings.MAILER_RETRY_BACKOFF_MAX,
        settings.MAILER_SEND_TIME_LIMIT,
        settings.EMAIL_TIMEOUT,
    )
    if longest >= visibility:
        return [
            Error(
                f"A send task delay of {longest:g}s reaches the Redis "
                f"visibility_timeout ({visibility}s): the message would be "
                "redelivered and the mail sent twice.",
                hint="Lower MAILER_RETRY_BACKOFF_MAX / MAILER_SEND_TIME_LIMIT or "
                "raise CELERY_VISIBILITY_TIMEOUT.",
                id="mailer.E001",
            )
        ]
    return []


@register(Tags.compatibility)
def check_heartbeat_renews_within_the_lease(app_configs, **kwargs) -> list[Error]:
    """A lease must outlive a few heartbeats, or live workers lose their rows."""
    interval, lease = settings.MAILER_HEARTBEAT_INTERVAL, settings.MAILER_LEASE
    if 0 < interval and lease < 2 * interval:
        return [
            Error(
                f"MAILER_LEASE ({lease:g}s) is shorter than two heartbeats "
                f"(MAILER_HEARTBEAT_INTERVAL={interval:g}s): one late beat would "
                "hand a live worker's mails to another worker.",
                hint="Keep MAILER_LEASE at least 3x MAILER_HEARTBEAT_INTERVAL.",
                id="mailer.E002",
            )
        ]
    return []


@register(Tags.compatibility)
def check_relay_budget(app_configs, **kwargs) -> list[Error]:
    """MAILER_RELAY_MAX_CONNECTIONS and MAILER_RELAY_RATE must make sense at start."""
    errors = []
    try:
        budget.max_connections()
    except (TypeError, ValueError):
        errors.append(
            Error(
                "MAILER_RELAY_MAX_CONNECTIONS="
                f"{settings.MAILER_RELAY_MAX_CONNECTIONS!r} is not a whole number "
                "of at least 1.",
                hint="Set the open SMTP connections every worker may share, "
                "e.g. MAILER_RELAY_MAX_CONNECTIONS=8.",
                id="mailer.E003",
            )
        )
    try:
        budget.fixed_rate()
    except (TypeError, ValueError):
        errors.append(
            Error(
                f"MAILER_RELAY_RATE={settings.MAILER_RELAY_RATE!r} is not a "
                "positive number of mails per second.",
                hint="Leave it empty for no fixed rate, or set e.g. "
                "MAILER_RELAY_RATE=14 (SES's default sending rate).",
                id="mailer.E004",
            )
        )
    return errors


@worker_init.connect(dispatch_uid="mailer.checks.worker_refuses_errors")
def refuse_to_start_with_errors(**kwargs) -> None:
    """Stop a worker whose relay budget settings are nonsense, before it takes mail.

    Celery's Django fixup runs the system checks and ignores what they
    find, and an exception in a signal receiver is only logged: exiting is
    the one way a worker start can fail here. Without it, every send would
    fail on the unparsable value.
    """
    errors = [error for error in check_relay_budget(None) if error.is_serious()]
    for error in errors:
        logger.critical("%s: %s HINT: %s", error.id, error.msg, error.hint)
    if errors:
        raise SystemExit(1)


@register(Tags.security)
def check_esp_webhooks_have_a_secret(app_configs, **kwargs) -> list[Warning]:
    """An ESP backend without ANYMAIL_WEBHOOK_SECRET hears no bounce or complaint."""
    from mailer.esp import uses_anymail

    secret = getattr(settings, "ANYMAIL", {}).get("WEBHOOK_SECRET")
    if uses_anymail(settings.EMAIL_BACKEND) and not secret:
        return [
            Warning(
                f"EMAIL_BACKEND is an ESP ({settings.EMAIL_BACKEND}) but "
                "ANYMAIL_WEBHOOK_SECRET is not set: the /anymail/ webhooks are "
                "not served, so the ESP's bounces and complaints never reach "
                "the suppression list.",
                hint="Set ANYMAIL_WEBHOOK_SECRET=user:password and give the ESP "
                "https://user:password@<host>/anymail/<esp>/tracking/.",
                id="mailer.W001",
            )
        ]
    return []

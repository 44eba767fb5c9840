from django.apps import AppConfig


class MailerConfig(AppConfig):
    name = "mailer"
    verbose_name = "Mailer"

    def ready(self) -> None:
        from anymail.signals import tracking

        from mailer import (  # noqa: F401 - registers checks and signal receivers
            checks,
            connections,
            esp,
            lifeline,
            receivers,
        )
        from users.signals import (
            activation_resend_requested,
            registration_repeated,
            user_registered,
        )

        user_registered.connect(
            receivers.queue_welcome_email, dispatch_uid="mailer.queue_welcome_email"
        )
        registration_repeated.connect(
            receivers.queue_account_exists_notice,
            dispatch_uid="mailer.queue_account_exists_notice",
        )
        activation_resend_requested.connect(
            receivers.queue_activation_email,
            dispatch_uid="mailer.queue_activation_email",
        )
        tracking.connect(
            esp.record_tracking_event, dispatch_uid="mailer.esp.record_tracking_event"
        )

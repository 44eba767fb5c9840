from django.apps import AppConfig


class MailerConfig(AppConfig):
    name = "mailer"
    verbose_name = "Mailer"

    def ready(self) -> None:
        from mailer import checks, connections, receivers  # noqa: F401 - registers
        from users.signals import user_registered

        user_registered.connect(
            receivers.queue_welcome_email, dispatch_uid="mailer.queue_welcome_email"
        )

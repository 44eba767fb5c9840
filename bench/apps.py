from django.apps import AppConfig
from django.conf import settings


class BenchConfig(AppConfig):
    name = "bench"
    verbose_name = "Benchmark (bench-only views and tasks)"

    def ready(self) -> None:
        from users.signals import user_registered

        if settings.BENCH_MAIL_PATH == "off":
            user_registered.disconnect(dispatch_uid="mailer.queue_welcome_email")

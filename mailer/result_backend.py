"""The `django-db` result backend, writing through mailer.results' manager."""

from django_celery_results.backends import DatabaseBackend as StockDatabaseBackend


class DatabaseBackend(StockDatabaseBackend):
    """The `django-db` result backend, writing through `UpsertTaskResultManager`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Celery may load its backend before Django's apps are ready.
        from mailer.models import TaskResultRecord

        self.TaskModel = TaskResultRecord

"""The Celery app: `celery -A celery_app worker`, `beat`, `flower`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("welcome")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

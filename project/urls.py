from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from mailer.esp import webhook_urls
from project.health import healthz
from project.metrics import metrics
from project.openapi import openapi_document

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("api/openapi.json", openapi_document, name="openapi"),
    path("", include("users.urls")),
]

# ESP tracking webhooks (anymail's own URLs, e.g. /anymail/postmark/tracking/),
# served only behind their basic-auth secret: without it, 404.
# A body anymail cannot read answers 400 (mailer/esp.py).
if settings.ANYMAIL.get("WEBHOOK_SECRET"):
    urlpatterns.insert(0, path("anymail/", include(webhook_urls())))

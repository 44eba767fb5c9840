from django.contrib import admin
from django.urls import include, path

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

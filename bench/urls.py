"""The app's URLs plus the inline baseline; used only by bench processes."""

from django.urls import include, path

from bench import views

urlpatterns = [
    path("bench/inline-register", views.inline_register, name="bench-inline"),
    path("", include("project.urls")),
]

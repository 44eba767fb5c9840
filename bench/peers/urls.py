"""The users app's URLs only: the activation link the welcome mail carries."""

from django.urls import include, path

urlpatterns = [path("", include("users.urls"))]

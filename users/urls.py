from django.urls import path

from users import api, views

app_name = "users"

urlpatterns = [
    path("register/", views.register, name="register"),
    path("register/done/", views.register_done, name="register-done"),
    path("api/register", api.api_register, name="api-register"),
    path("api/activation/resend", api.api_activation_resend, name="api-resend"),
    path("activate/done/", views.activate_done, name="activate-done"),
    path("activate/resend/", views.activation_resend, name="activation-resend"),
    path(
        "activate/resend/done/",
        views.activation_resend_done,
        name="activation-resend-done",
    ),
    path("activate/<str:token>/", views.activate, name="activate"),
]

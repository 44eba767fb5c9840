from django.urls import path

from users import views

app_name = "users"

urlpatterns = [
    path("register/", views.register, name="register"),
    path("register/done/", views.register_done, name="register-done"),
    path("api/register", views.api_register, name="api-register"),
    path("activate/done/", views.activate_done, name="activate-done"),
    path("activate/<str:token>/", views.activate, name="activate"),
]

"""The HTML pages: registration, activation and resend, each a form and a page."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from users import ratelimit
from users.forms import ActivationResendForm, RegistrationForm
from users.languages import request_language
from users.metrics import counts_registrations
from users.ratelimit import RateLimited
from users.services import (
    EmailAlreadyRegistered,
    activate_user,
    register_user,
    request_activation_resend,
)
from users.tokens import InvalidToken, read_activation_token


@counts_registrations("form")
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        form = RegistrationForm(initial={"language": request_language(request)})
        return render(request, "users/register.html", {"form": form})
    form, answer = _posted_form(
        request, RegistrationForm, template="users/register.html", scope="register"
    )
    if answer:
        return answer
    try:
        register_user(
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password"],
            language=form.cleaned_data["language"] or request_language(request),
        )
    except EmailAlreadyRegistered:
        pass
    return redirect("users:register-done")


def register_done(request: HttpRequest) -> HttpResponse:
    return render(request, "users/register_done.html")


@require_http_methods(["GET", "POST"])
def activation_resend(request: HttpRequest) -> HttpResponse:
    template = "users/activation_resend.html"
    if request.method == "GET":
        return render(request, template, {"form": ActivationResendForm()})
    form, answer = _posted_form(
        request, ActivationResendForm, template=template, scope="resend"
    )
    if answer:
        return answer
    request_activation_resend(**form.cleaned_data)
    return redirect("users:activation-resend-done")


def activation_resend_done(request: HttpRequest) -> HttpResponse:
    return render(request, "users/activation_resend_done.html")


@never_cache
@require_http_methods(["GET", "POST"])
def activate(request: HttpRequest, token: str) -> HttpResponse:
    # GET only shows a button: mail scanners prefetch links, people click.
    try:
        if request.method == "POST":
            activate_user(token=token)
            return redirect(reverse("users:activate-done"))
        read_activation_token(token)
    except InvalidToken as error:
        return render(
            request, "users/activate_invalid.html", {"reason": error.reason}, status=400
        )
    return render(request, "users/activate_confirm.html")


def activate_done(request: HttpRequest) -> HttpResponse:
    return render(request, "users/activate_done.html")


def _posted_form(request: HttpRequest, form_class, *, template: str, scope: str):
    """Bind a POSTed form within the IP and address limits.

    Returns (valid form, None), or (None, the 400 form page or the 429 page).
    Invalid posts count against the IP limit too.
    """
    try:
        ratelimit.limit_client_ip(request, scope=scope)
        form = form_class(request.POST)
        if not form.is_valid():
            return None, render(request, template, {"form": form}, status=400)
        ratelimit.limit_address(form.cleaned_data["email"], scope=scope)
    except RateLimited as limited:
        return None, _too_many_page(request, limited)
    return form, None


def _too_many_page(request: HttpRequest, limited: RateLimited) -> HttpResponse:
    context = {"retry_after": limited.retry_after}
    response = render(request, "users/too_many.html", context, status=429)
    response["Retry-After"] = str(limited.retry_after)
    return response

import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from users import ratelimit
from users.forms import ActivationResendForm, RegistrationForm
from users.metrics import counts_registrations
from users.ratelimit import RateLimited
from users.services import (
    EmailAlreadyRegistered,
    activate_user,
    register_user,
    request_activation_resend,
)
from users.tokens import InvalidToken, read_activation_token

# One answer for a new address and a taken one: the response never tells
# whether an account exists (see README, "Account enumeration").
ACCEPTED = {
    "status": "accepted",
    "detail": "Check your inbox for a link to activate your account.",
}
# The same for any address, with or without an account waiting for activation.
RESEND_ACCEPTED = {
    "status": "accepted",
    "detail": "If an account with this address awaits activation, "
    "a new activation link is on its way.",
}


@counts_registrations("form")
@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "users/register.html", {"form": RegistrationForm()})
    form, answer = _posted_form(
        request, RegistrationForm, template="users/register.html", scope="register"
    )
    if answer:
        return answer
    try:
        register_user(**form.cleaned_data)
    except EmailAlreadyRegistered:
        pass
    return redirect("users:register-done")


def register_done(request: HttpRequest) -> HttpResponse:
    return render(request, "users/register_done.html")


@csrf_exempt  # a JSON API for clients without a session; nothing to forge
@counts_registrations("api")
@require_POST
def api_register(request: HttpRequest) -> JsonResponse:
    form, problem = _limited_json_form(request, RegistrationForm, scope="register")
    if problem:
        return problem
    try:
        register_user(**form.cleaned_data)
    except EmailAlreadyRegistered:
        pass
    return JsonResponse(ACCEPTED, status=202)


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


@csrf_exempt  # a JSON API for clients without a session; nothing to forge
@require_POST
def api_activation_resend(request: HttpRequest) -> JsonResponse:
    form, problem = _limited_json_form(request, ActivationResendForm, scope="resend")
    if problem:
        return problem
    request_activation_resend(**form.cleaned_data)
    return JsonResponse(RESEND_ACCEPTED, status=202)


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


def _limited_json_form(request: HttpRequest, form_class, *, scope: str):
    """The JSON counterpart of `_posted_form`: (valid form, None) or (None, 4xx)."""
    try:
        ratelimit.limit_client_ip(request, scope=scope)
        form, problem = _read_json_form(request, form_class)
        if problem:
            return None, problem
        ratelimit.limit_address(form.cleaned_data["email"], scope=scope)
    except RateLimited as limited:
        return None, _too_many_json(limited)
    return form, None


def _too_many_json(limited: RateLimited) -> JsonResponse:
    message = f"Too many requests. Try again in {limited.retry_after} seconds."
    response = JsonResponse(_error("__all__", message), status=429)
    response["Retry-After"] = str(limited.retry_after)
    return response


def _too_many_page(request: HttpRequest, limited: RateLimited) -> HttpResponse:
    context = {"retry_after": limited.retry_after}
    response = render(request, "users/too_many.html", context, status=429)
    response["Retry-After"] = str(limited.retry_after)
    return response


def _read_json_form(request: HttpRequest, form_class):
    """Return (bound valid form, None) or (None, a 4xx JSON answer)."""
    data, problem = _read_json_object(request, fields=form_class.base_fields)
    if problem:
        return None, problem
    form = form_class({field: data.get(field) for field in form_class.base_fields})
    if not form.is_valid():
        errors = {field: list(messages) for field, messages in form.errors.items()}
        return None, JsonResponse({"errors": errors}, status=400)
    return form, None


def _read_json_object(
    request: HttpRequest, *, fields
) -> tuple[dict, JsonResponse | None]:
    limit = settings.REGISTRATION_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    body = request.read(limit + 1) if declared <= limit else b""
    if declared > limit or len(body) > limit:
        error = _error("__all__", f"Request body is larger than {limit} bytes.")
        return {}, JsonResponse(error, status=413)
    try:
        data = json.loads(body)
    # ValueError covers bad UTF-8 and integers past Python's digit limit;
    # RecursionError, arrays nested thousands deep.
    except (ValueError, RecursionError):
        return {}, JsonResponse(_error("__all__", "Malformed JSON."), status=400)
    if not isinstance(data, dict):
        error = _error("__all__", "Expected a JSON object.")
        return {}, JsonResponse(error, status=400)
    for field in fields:
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            return {}, JsonResponse(_error(field, "Must be a string."), status=400)
        if value is not None and not _is_encodable(value):
            # JSON may escape lone surrogates ("\ud800"), which no UTF-8 can hold.
            return {}, JsonResponse(_error(field, "Must be valid Unicode."), status=400)
    return data, None


def _is_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _error(field: str, message: str) -> dict:
    return {"errors": {field: [message]}}


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

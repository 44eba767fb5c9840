import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from users.forms import RegistrationForm
from users.services import EmailAlreadyRegistered, activate_user, register_user
from users.tokens import InvalidToken, read_activation_token

# One answer for a new address and a taken one: the response never tells
# whether an account exists (see README, "Account enumeration").
ACCEPTED = {
    "status": "accepted",
    "detail": "Check your inbox for a link to activate your account.",
}


@require_http_methods(["GET", "POST"])
def register(request: HttpRequest) -> HttpResponse:
    form = RegistrationForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                register_user(**form.cleaned_data)
            except EmailAlreadyRegistered:
                pass
            return redirect("users:register-done")
        return render(request, "users/register.html", {"form": form}, status=400)
    return render(request, "users/register.html", {"form": form})


def register_done(request: HttpRequest) -> HttpResponse:
    return render(request, "users/register_done.html")


@csrf_exempt  # a JSON API for clients without a session; nothing to forge
@require_POST
def api_register(request: HttpRequest) -> JsonResponse:
    data, problem = _read_json_object(request)
    if problem:
        return problem
    form = RegistrationForm(
        {field: data.get(field) for field in RegistrationForm.base_fields}
    )
    if not form.is_valid():
        errors = {field: list(messages) for field, messages in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    try:
        register_user(**form.cleaned_data)
    except EmailAlreadyRegistered:
        pass
    return JsonResponse(ACCEPTED, status=202)


def _read_json_object(request: HttpRequest) -> tuple[dict, JsonResponse | None]:
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
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}, JsonResponse(_error("__all__", "Malformed JSON."), status=400)
    if not isinstance(data, dict):
        error = _error("__all__", "Expected a JSON object.")
        return {}, JsonResponse(error, status=400)
    for field in RegistrationForm.base_fields:
        if data.get(field) is not None and not isinstance(data[field], str):
            return {}, JsonResponse(_error(field, "Must be a string."), status=400)
    return data, None


def _error(field: str, message: str) -> dict:
    return {"errors": {field: [message]}}


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

"""The JSON API: registration and activation resend, answered at once (202)."""

from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from users import ratelimit
from users.forms import ActivationResendForm, RegistrationForm
from users.json_body import json_error, read_json_form
from users.languages import request_language
from users.metrics import counts_registrations
from users.ratelimit import RateLimited
from users.services import (
    EmailAlreadyRegistered,
    register_user,
    request_activation_resend,
)

# One answer for a new address and a taken one: the response never tells
# whether an account exists (docs/api.md, "Account enumeration"). The detail
# is in the request's language.
ACCEPTED = {
    "status": "accepted",
    "detail": _("Check your inbox for a link to activate your account."),
}


# The same for any address, with or without an account waiting for activation.
RESEND_ACCEPTED = {
    "status": "accepted",
    "detail": _(
        "If an account with this address awaits activation, "
        "a new activation link is on its way."
    ),
}


@csrf_exempt  # a JSON API for clients without a session; nothing to forge
@counts_registrations("api")
@require_POST
def api_register(request: HttpRequest) -> JsonResponse:
    form, problem = _limited_json_form(request, RegistrationForm, scope="register")
    if problem:
        return problem
    try:
        register_user(
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password"],
            language=form.cleaned_data["language"] or request_language(request),
        )
    except EmailAlreadyRegistered:
        pass
    return JsonResponse(ACCEPTED, status=202)


@csrf_exempt  # a JSON API for clients without a session; nothing to forge
@require_POST
def api_activation_resend(request: HttpRequest) -> JsonResponse:
    form, problem = _limited_json_form(request, ActivationResendForm, scope="resend")
    if problem:
        return problem
    request_activation_resend(**form.cleaned_data)
    return JsonResponse(RESEND_ACCEPTED, status=202)


def _limited_json_form(request: HttpRequest, form_class, *, scope: str):
    """The JSON counterpart of `_posted_form`: (valid form, None) or (None, 4xx)."""
    try:
        ratelimit.limit_client_ip(request, scope=scope)
        form, problem = read_json_form(request, form_class)
        if problem:
            return None, problem
        ratelimit.limit_address(form.cleaned_data["email"], scope=scope)
    except RateLimited as limited:
        return None, _too_many_json(limited)
    return form, None


def _too_many_json(limited: RateLimited) -> JsonResponse:
    message = ngettext(
        "Too many requests. Try again in %(seconds)d second.",
        "Too many requests. Try again in %(seconds)d seconds.",
        limited.retry_after,
    ) % {"seconds": limited.retry_after}
    response = JsonResponse(json_error("__all__", message), status=429)
    response["Retry-After"] = str(limited.retry_after)
    return response

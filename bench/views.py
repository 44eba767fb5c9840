"""The naive baseline: the welcome mail sent inside the registration request."""

import json
from email.utils import make_msgid

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from mailer.messages import build_message
from mailer.models import Delivery
from users.api import ACCEPTED
from users.forms import RegistrationForm
from users.services import EmailAlreadyRegistered, register_user


@csrf_exempt
@require_POST
def inline_register(request: HttpRequest) -> JsonResponse:
    """Register, then render and send the welcome mail before answering.

    Run in a process whose user_registered receiver is disconnected
    (BENCH_MAIL_PATH=off), so the mail goes out once, here, over a new SMTP
    connection: what a first version without a queue does.
    """
    try:
        data = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return JsonResponse({"errors": {"__all__": ["Malformed JSON."]}}, status=400)
    form = RegistrationForm(data if isinstance(data, dict) else {})
    if not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    try:
        user = register_user(**form.cleaned_data)
    except EmailAlreadyRegistered:
        return JsonResponse(ACCEPTED, status=202)
    unsaved = Delivery(
        user=user,
        kind=Delivery.Kind.WELCOME,
        message_id=make_msgid(domain="example.com"),
    )
    build_message(unsaved).send()
    return JsonResponse(ACCEPTED, status=202)

"""The mail each kind of outbox row sends: fixed subject, text + HTML templates.

Each is written in the row's language.
"""

import smtplib

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives
from django.core.validators import validate_email
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext_lazy as _

from mailer.mime import PreparedMail
from mailer.models import Delivery

# Fixed text: nothing a person typed ever reaches a header but their address,
# and that only after validation below.
SUBJECTS = {
    Delivery.Kind.WELCOME: _("Welcome! Please activate your account"),
    Delivery.Kind.ACCOUNT_EXISTS: _("You already have an account"),
    Delivery.Kind.ACTIVATION: _("Your new activation link"),
}


class UnsendableAddress(smtplib.SMTPRecipientsRefused):
    """A stored address that is not exactly one valid address: refused, 553.

    Raised before any connection opens; as an SMTPRecipientsRefused with a 5xx
    code the send task fails the row at once instead of retrying it.
    """

    def __init__(self, address: str) -> None:
        super().__init__({address: (553, b"5.1.3 Not a single valid address")})


def build_message(delivery: Delivery) -> EmailMultiAlternatives:
    """Return the text + HTML mail a claimed row of any kind sends."""
    user = delivery.user
    address = recipient(user.email)
    context = {"activation_url": None, "valid_days": _valid_days()}
    if delivery.kind != Delivery.Kind.ACCOUNT_EXISTS or _awaits_activation(user):
        context["activation_url"] = activation_url(user)
    template = f"mailer/{delivery.kind}"
    # The worker serves no request: the row says which language to write in.
    # str() now, inside it: a lazy subject would render when the mail is sent.
    with translation.override(delivery.language):
        subject = str(SUBJECTS[delivery.kind])
        text = render_to_string(f"{template}.txt", context)
        html = render_to_string(f"{template}.html", context)
    message = PreparedMail(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[address],
        headers={"Message-ID": delivery.message_id},
    )
    message.attach_alternative(html, "text/html")
    # anymail sends it to the ESP, whose bounce webhook brings it back
    # (mailer/esp.py); Django's SMTP backend ignores the attribute.
    message.metadata = {"delivery_id": str(delivery.pk)}
    return message


def recipient(address: str) -> str:
    """Return `address` if it is one valid address; raise UnsendableAddress."""
    if "\r" in address or "\n" in address or "," in address:
        raise UnsendableAddress(address)
    try:
        validate_email(address)
    except ValidationError as exc:
        raise UnsendableAddress(address) from exc
    return address


def activation_url(user) -> str:
    from users.tokens import make_activation_token

    token = make_activation_token(user)
    return settings.SITE_URL + reverse("users:activate", kwargs={"token": token})


def _awaits_activation(user) -> bool:
    return not user.is_active and user.activated_at is None


def _valid_days() -> int:
    return max(1, settings.ACCOUNT_ACTIVATION_MAX_AGE // 86400)

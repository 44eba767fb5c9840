"""Business rules for accounts: registration and activation."""

from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.utils import timezone

from users.languages import supported_language
from users.models import User
from users.signals import (
    activation_resend_requested,
    registration_repeated,
    user_registered,
)
from users.tokens import read_activation_token


class EmailAlreadyRegistered(Exception):
    """An account with this address exists, in some letter case."""


def register_user(*, email: str, password: str, language: str = "") -> User:
    """Create an inactive account and announce it with `user_registered`.

    `language` (a LANGUAGES code; anything else means LANGUAGE_CODE) is the
    language of the account's mails.

    When the address is taken in any letter case, announce that instead with
    `registration_repeated` (the owner gets a notice, not a second account)
    and raise `EmailAlreadyRegistered`. The password is hashed either way, so
    both answers take the same time.
    """
    email = User.objects.normalize_email(email)
    user, created = _create_or_find_user(
        email=email,
        hashed=make_password(password),
        language=supported_language(language),
    )
    if not created:
        raise EmailAlreadyRegistered(email)
    return user


@transaction.atomic
def _create_or_find_user(
    *, email: str, hashed: str, language: str
) -> tuple[User, bool]:
    # The lock serializes repeated registrations of one address.
    existing = User.objects.select_for_update().filter(email__iexact=email).first()
    if existing is None:
        try:
            with transaction.atomic():
                user = User.objects.create(
                    email=email, password=hashed, language=language
                )
        except IntegrityError:  # a concurrent registration won the race
            existing = User.objects.get(email__iexact=email)
        else:
            user_registered.send(sender=User, user=user)
            return user, True
    registration_repeated.send(sender=User, user=existing)
    return existing, False


@transaction.atomic
def request_activation_resend(*, email: str) -> None:
    """Announce `activation_resend_requested` if the address awaits activation.

    Says nothing either way: the caller answers the same for any address. An
    account an admin deactivated after activation gets no new link.
    """
    user = (
        User.objects.select_for_update()
        .filter(
            email__iexact=User.objects.normalize_email(email),
            is_active=False,
            activated_at__isnull=True,
        )
        .first()
    )
    if user is not None:
        activation_resend_requested.send(sender=User, user=user)


@transaction.atomic
def activate_user(*, token: str) -> User:
    """Activate the account a valid activation token names.

    Raises `users.tokens.InvalidToken` for a forged, expired or used token.
    """
    user = read_activation_token(token, lock=True)
    user.is_active = True
    user.activated_at = timezone.now()
    user.save(update_fields=["is_active", "activated_at"])
    return user

"""Business rules for accounts: registration and activation."""

from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, transaction
from django.utils import timezone

from users.models import User
from users.signals import user_registered
from users.tokens import read_activation_token


class EmailAlreadyRegistered(Exception):
    """An account with this address exists, in some letter case."""


@transaction.atomic
def register_user(*, email: str, password: str) -> User:
    """Create an inactive account and announce it with `user_registered`.

    Raises `EmailAlreadyRegistered` (after hashing anyway, so both answers
    take the same time) when the address is taken in any letter case.
    """
    email = User.objects.normalize_email(email)
    hashed = make_password(password)
    if User.objects.filter(email__iexact=email).exists():
        raise EmailAlreadyRegistered(email)
    try:
        with transaction.atomic():
            user = User.objects.create(email=email, password=hashed)
    except IntegrityError as exc:  # a concurrent registration won the race
        raise EmailAlreadyRegistered(email) from exc
    user_registered.send(sender=User, user=user)
    return user


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

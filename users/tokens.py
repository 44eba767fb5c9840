"""Activation tokens: signed, expiring, and void once the account is active."""

from django.conf import settings
from django.core import signing
from django.utils.crypto import constant_time_compare, salted_hmac

from users.models import User

SALT = "users.activation"


class InvalidToken(Exception):
    """The token is malformed, forged, expired or already used."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "invalid", "expired" or "used"


def _state(user: User) -> str:
    # Changes when the account is activated, so a used token stops working.
    value = f"{user.pk}:{user.is_active}:{user.activated_at}:{user.password}"
    return salted_hmac(SALT, value, algorithm="sha256").hexdigest()[:20]


def make_activation_token(user: User) -> str:
    """Return a URL-safe token that activates `user` once."""
    return signing.dumps({"u": user.pk, "s": _state(user)}, salt=SALT, compress=True)


def read_activation_token(token: str, *, lock: bool = False) -> User:
    """Return the user a valid token activates; raise `InvalidToken` otherwise.

    With `lock`, the user row is locked first (inside a transaction), so two
    concurrent uses of one token cannot both pass.
    """
    try:
        payload = signing.loads(
            token, salt=SALT, max_age=settings.ACCOUNT_ACTIVATION_MAX_AGE
        )
    except signing.SignatureExpired as exc:
        raise InvalidToken("expired") from exc
    except signing.BadSignature as exc:
        raise InvalidToken("invalid") from exc
    try:
        users = User.objects.select_for_update() if lock else User.objects
        user = users.get(pk=payload["u"])
        state = str(payload["s"])
    except (User.DoesNotExist, KeyError, TypeError) as exc:
        raise InvalidToken("invalid") from exc
    if not constant_time_compare(state, _state(user)):
        raise InvalidToken("used")
    return user

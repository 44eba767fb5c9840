import pytest
from django.contrib.auth.hashers import identify_hasher
from django.core import signing
from django.db import transaction

from mailer.models import Delivery
from users.models import User
from users.services import EmailAlreadyRegistered, activate_user, register_user
from users.signals import user_registered
from users.tokens import InvalidToken, make_activation_token

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


def test_register_user_creates_an_inactive_account_hashed_with_argon2id():
    user = register_user(email="Ada@Example.COM", password=PASSWORD)

    user.refresh_from_db()
    assert user.email == "Ada@example.com"
    assert not user.is_active
    hasher = identify_hasher(user.password)
    assert hasher.algorithm == "argon2"
    assert "$argon2id$" in user.password and "m=19456,t=2,p=1" in user.password
    assert user.check_password(PASSWORD)


# Outside the test's own transaction, so only register_user's can be seen.
@pytest.mark.django_db(transaction=True)
def test_register_user_sends_user_registered_inside_its_transaction():
    seen = []

    def receiver(sender, *, user, **kwargs):
        seen.append((user.email, transaction.get_connection().in_atomic_block))

    user_registered.connect(receiver, dispatch_uid="test-receiver")
    try:
        register_user(email="grace@example.com", password=PASSWORD)
    finally:
        user_registered.disconnect(dispatch_uid="test-receiver")
    assert seen == [("grace@example.com", True)]


def test_same_address_in_another_letter_case_creates_no_second_account():
    register_user(email="alan@example.com", password=PASSWORD)

    with pytest.raises(EmailAlreadyRegistered):
        register_user(email="ALAN@EXAMPLE.com", password=PASSWORD)

    assert User.objects.count() == 1
    assert Delivery.objects.filter(kind="welcome").count() == 1


def test_activation_token_activates_the_account_once():
    user = register_user(email="kathy@example.com", password=PASSWORD)
    token = make_activation_token(user)

    activated = activate_user(token=token)

    assert activated.is_active and activated.activated_at is not None
    with pytest.raises(InvalidToken) as error:
        activate_user(token=token)
    assert error.value.reason == "used"


def test_expired_activation_token_activates_nothing(settings):
    user = register_user(email="expired@example.com", password=PASSWORD)
    token = make_activation_token(user)
    settings.ACCOUNT_ACTIVATION_MAX_AGE = -1

    with pytest.raises(InvalidToken) as error:
        activate_user(token=token)

    assert error.value.reason == "expired"
    user.refresh_from_db()
    assert not user.is_active


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        signing.dumps({"u": 1, "s": "x"}, salt="another.salt"),
        signing.dumps({"u": 999999, "s": "x"}, salt="users.activation"),
        signing.dumps(["a", "list"], salt="users.activation"),
    ],
)
def test_forged_or_foreign_activation_token_is_invalid(token):
    register_user(email="barbara@example.com", password=PASSWORD)

    with pytest.raises(InvalidToken) as error:
        activate_user(token=token)

    assert error.value.reason == "invalid"
    assert not User.objects.filter(is_active=True).exists()

from django import forms
from django.contrib.auth import password_validation
from django.utils.translation import gettext_lazy as _

from users.languages import language_choices, supported_language
from users.models import User


def validate_local_part_length(value: str) -> None:
    """RFC 5321 allows 64 octets before the @; relays refuse longer ones."""
    if len(value.rpartition("@")[0].encode()) > 64:
        raise forms.ValidationError(
            _("The part before @ can be at most 64 characters."), code="invalid"
        )


class LanguageField(forms.ChoiceField):
    """A select of LANGUAGES that refuses nothing.

    An unknown or malformed code cleans to the default language, never to a
    form error; an empty one to "" (no choice: the caller takes the request's).
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("choices", language_choices)
        super().__init__(required=False, **kwargs)

    def to_python(self, value) -> str:
        if value in self.empty_values:
            return ""
        return supported_language(value)


class RegistrationForm(forms.Form):
    """Email, password and language, validated as Django validates accounts."""

    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        validators=[validate_local_part_length],
    )
    password = forms.CharField(
        label=_("Password"),
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    language = LanguageField(
        label=_("Language"),
        help_text=_("The language of the mails we send you."),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Rendered per request, in its language: not fixed at import time.
        self.fields[
            "password"
        ].help_text = password_validation.password_validators_help_text_html()

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password:
            user = User(email=cleaned.get("email") or "")
            try:
                password_validation.validate_password(password, user)
            except forms.ValidationError as error:
                self.add_error("password", error)
        return cleaned


class ActivationResendForm(forms.Form):
    """The address that should get a new activation link."""

    email = forms.EmailField(
        label=_("Email address"),
        max_length=254,
        validators=[validate_local_part_length],
    )

from django import forms
from django.contrib.auth import password_validation

from users.models import User


def validate_local_part_length(value: str) -> None:
    """RFC 5321 allows 64 octets before the @; relays refuse longer ones."""
    if len(value.rpartition("@")[0].encode()) > 64:
        raise forms.ValidationError(
            "The part before @ can be at most 64 characters.", code="invalid"
        )


class RegistrationForm(forms.Form):
    """Email and password, validated as Django validates account passwords."""

    email = forms.EmailField(max_length=254, validators=[validate_local_part_length])
    password = forms.CharField(
        max_length=128,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )

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

    email = forms.EmailField(max_length=254, validators=[validate_local_part_length])

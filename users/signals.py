"""Signals the users app sends; other apps connect to them."""

from django.dispatch import Signal

# Sent inside the registration transaction with `user`: a person registered
# (not an admin creating a user, not a fixture load).
user_registered = Signal()

"""Signals the users app sends; other apps connect to them."""

from django.dispatch import Signal

# Sent inside the registration transaction with `user`: a person registered
# (not an admin creating a user, not a fixture load).
user_registered = Signal()

# Sent inside the registration transaction with `user`, the existing account:
# someone registered an address that already has one (in any letter case).
registration_repeated = Signal()

# Sent inside a transaction with `user`, an inactive account: someone asked for
# a new activation link for its address.
activation_resend_requested = Signal()

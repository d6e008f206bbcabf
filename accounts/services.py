"""Writes for identity: issuing and revoking API tokens."""

from __future__ import annotations

from django.contrib.auth.forms import UserCreationForm
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiToken, generate_token, hash_token


def api_token_create(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for ``user``; return the record and the raw token (shown once)."""
    raw = generate_token()
    token = ApiToken.objects.create(user=user, name=name, key_hash=hash_token(raw), prefix=raw[:10])
    return token, raw


def api_token_revoke(*, token: ApiToken) -> None:
    if token.revoked is None:
        token.revoked = timezone.now()
        token.save(update_fields=["revoked"])


def user_signup(*, form: UserCreationForm) -> User:
    """Create the user from a valid sign-up form and put them in the Lobby."""
    from chat.models import Membership, Room

    with transaction.atomic():
        user: User = form.save()
        lobby = Room.objects.filter(slug="lobby").first()
        if lobby is not None:
            Membership.objects.get_or_create(room=lobby, user=user)
    return user

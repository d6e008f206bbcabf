"""API tokens for programs: shown once, stored as a SHA-256 hash, revocable."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

TOKEN_PREFIX = "pk_"  # noqa: S105 - a label, not a secret


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a fast unsalted hash is enough: there is nothing to
    # brute-force, and lookups stay a single indexed equality.
    return hashlib.sha256(raw.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    # First characters of the token, so a user can tell tokens apart in the admin.
    prefix = models.CharField(max_length=12, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        state = "revoked" if self.revoked else "active"
        return f"{self.prefix}… ({self.user}, {state})"

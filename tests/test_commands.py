"""The management commands a newcomer and an operator run."""

from __future__ import annotations

import io

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from chat.models import Membership, Room

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_api_token_prints_a_working_token_last(daphne, make_user):
    make_user("ops")
    out = io.StringIO()
    call_command("create_api_token", "ops", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("pk_")
    assert " " not in token
    r = httpx.get(daphne.http_url + "/api/rooms", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200


def test_create_api_token_for_unknown_user_fails():
    with pytest.raises(CommandError, match="no user named"):
        call_command("create_api_token", "ghost", stdout=io.StringIO())


def test_bootstrap_creates_admin_and_lobby_once(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    first = out.getvalue()
    assert "password:" in first
    password = first.split("password:")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password(password)
    lobby = Room.objects.get(slug="lobby")
    assert lobby.visibility == "public"
    assert Membership.objects.filter(room=lobby, user=admin, role="owner").exists()

    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    assert "password:" not in out.getvalue()  # printed once, on creation only
    assert Room.objects.filter(name="Lobby").count() == 1
    # ...and the second run says how to set a new one, since it cannot show the old one.
    assert "DJANGO_SUPERUSER_PASSWORD=<new password> make run" in out.getvalue()
    admin.refresh_from_db()
    assert admin.check_password(password)  # unchanged by the second run


def test_bootstrap_reset_hint_works(monkeypatch):
    # Following the second run's advice sets the password, and says it did.
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    call_command("bootstrap", stdout=io.StringIO())
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-new-one-456")
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    assert "password from DJANGO_SUPERUSER_PASSWORD" in out.getvalue()
    assert get_user_model().objects.get(username="admin").check_password("a-new-one-456")


def test_bootstrap_takes_password_from_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "from-the-env-123")
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    assert "password:" not in out.getvalue()
    assert get_user_model().objects.get(username="admin").check_password("from-the-env-123")

"""Sign-up, login and the room list page, over a real daphne."""

from __future__ import annotations

import re

import httpx
import pytest

from chat.services import bootstrap_ensure

pytestmark = pytest.mark.django_db(transaction=True)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def test_anonymous_visitor_is_sent_to_login(daphne):
    r = httpx.get(daphne.http_url + "/", follow_redirects=False)
    assert r.status_code == 302
    assert r.headers["Location"].startswith("/accounts/login/")
    login = httpx.get(daphne.http_url + "/accounts/login/")
    assert login.status_code == 200
    assert "Log in" in login.text


def test_signup_joins_lobby_and_lists_rooms_then_logout(daphne):
    bootstrap_ensure(admin_password="admin-pass-for-tests")
    with httpx.Client(base_url=daphne.http_url, timeout=10) as c:
        form = c.get("/accounts/signup/")
        r = c.post(
            "/accounts/signup/",
            data={
                "username": "newbie",
                "password1": "correct-horse-battery",
                "password2": "correct-horse-battery",
                "csrfmiddlewaretoken": csrf_of(form.text),
            },
        )
        assert r.status_code == 302, r.text
        home = c.get("/")
        assert home.status_code == 200
        assert 'href="/rooms/lobby/"' in home.text
        assert "newbie" in home.text
        r = c.post("/accounts/logout/", data={"csrfmiddlewaretoken": csrf_of(home.text)})
        assert r.status_code == 302
        assert c.get("/", follow_redirects=False).status_code == 302


def test_signup_refuses_the_assistants_name_and_bad_passwords(daphne):
    with httpx.Client(base_url=daphne.http_url, timeout=10) as c:
        form = c.get("/accounts/signup/")
        r = c.post(
            "/accounts/signup/",
            data={
                "username": "Assistant",
                "password1": "correct-horse-battery",
                "password2": "correct-horse-battery",
                "csrfmiddlewaretoken": csrf_of(form.text),
            },
        )
        assert r.status_code == 200
        assert "reserved for the assistant" in r.text
        r = c.post(
            "/accounts/signup/",
            data={
                "username": "weak",
                "password1": "123",
                "password2": "123",
                "csrfmiddlewaretoken": csrf_of(form.text),
            },
        )
        assert r.status_code == 200
        assert "too short" in r.text

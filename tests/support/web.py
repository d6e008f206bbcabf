"""A browser-like HTTP client signed in with the session cookie, for page and form tests
(programs use bearer tokens; the pages and their forms are for people)."""

from __future__ import annotations

import re
from typing import Any

import httpx

# make_user's password (tests/conftest.py).
PASSWORD = "pw-for-tests-123"


def logged_in(server: Any, username: str, **client: Any) -> httpx.Client:
    """An httpx client of ``server`` (a DaphneServer) signed in as ``username`` through the
    login form, its CSRF token and all; ``client``: more httpx.Client arguments."""
    session = httpx.Client(base_url=server.http_url, timeout=15, **client)
    form = session.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert token
    r = session.post(
        "/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token[1]},
    )
    assert r.status_code == 302, r.text
    return session

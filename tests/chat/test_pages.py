"""The HTML pages over a real daphne (DEBUG off, as in production): error pages, favicon."""

from __future__ import annotations

import re
from contextlib import closing

import httpx
import pytest
from django.test import RequestFactory
from django.views.defaults import permission_denied

from tests.support.web import logged_in

pytestmark = pytest.mark.django_db(transaction=True)


def assert_styled_error(html: str, heading: str) -> None:
    assert '<header class="site">' in html  # the site's header, with its stylesheet
    assert re.search(r'<link rel="stylesheet" href="/static/chat/base\.[0-9a-f]{12}\.css"', html)
    assert heading in html
    assert '<a class="btn" href="/">Back to your rooms</a>' in html
    assert "Using the URLconf" not in html  # not Django's DEBUG page


def test_unknown_and_private_rooms_get_the_styled_404_page(daphne, make_user, make_room):
    ann, _ = make_user("ann")
    make_user("bob")
    secret = make_room(ann, "Secret plans", visibility="private")
    with closing(logged_in(daphne, "bob")) as bob:
        for path in ("/rooms/no-such-room/", f"/rooms/{secret.slug}/", "/no/such/page"):
            r = bob.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("text/html")
            assert_styled_error(r.text, "There is nothing here")
            assert "Secret plans" not in r.text  # nothing tells the room exists
    # A stranger gets the same page, with a way to log in.
    r = httpx.get(f"{daphne.http_url}/no/such/page")
    assert r.status_code == 404
    assert_styled_error(r.text, "There is nothing here")
    assert 'href="/accounts/login/"' in r.text
    # The API still answers JSON.
    r = httpx.get(f"{daphne.http_url}/api/no/such/endpoint")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_the_403_page_is_styled(make_user):
    bob, _ = make_user("bob")
    request = RequestFactory().get("/somewhere")
    request.user = bob
    response = permission_denied(request, PermissionError("no"))
    assert response.status_code == 403
    html = response.content.decode()
    assert_styled_error(html, "You cannot open this page")
    assert "bob" in html  # the header shows who is signed in


def test_favicon_is_served_and_linked_from_the_pages(daphne, make_user):
    make_user("ann")
    r = httpx.get(f"{daphne.http_url}/favicon.ico", follow_redirects=True)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert r.content.startswith(b"<svg")
    with closing(logged_in(daphne, "ann")) as ann:
        for path in ("/", "/accounts/login/", "/rooms/no-such-room/"):
            html = ann.get(path).text
            link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html)
            assert link, path
            icon = ann.get(link[1])
            assert icon.status_code == 200
            assert icon.content == r.content

"""Security headers, static files and cookies, as a browser meets them over a real daphne."""

from __future__ import annotations

import httpx
import pytest
from django.templatetags.static import static

pytestmark = pytest.mark.django_db(transaction=True)


def test_pages_carry_the_csp_and_json_does_not(daphne):
    page = httpx.get(f"{daphne.http_url}/accounts/login/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script" not in page.text  # the login page needs no script at all
    api = httpx.get(f"{daphne.http_url}/api/rooms")
    assert "content-security-policy" not in api.headers


def test_hashed_static_files_are_immutable_and_plain_names_revalidate(daphne):
    hashed = static("chat/js/room.js")
    assert hashed != "/static/chat/js/room.js"
    r = httpx.get(daphne.http_url + hashed)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Its imports point at hashed names too, so the whole module graph is cacheable.
    assert 'from "./store.' in r.text
    assert 'from "./store.js"' not in r.text
    plain = httpx.get(f"{daphne.http_url}/static/chat/js/room.js")
    assert (plain.status_code, plain.headers["cache-control"]) == (200, "no-cache")
    assert httpx.get(f"{daphne.http_url}/static/chat/nope.js").status_code == 404
    assert httpx.get(f"{daphne.http_url}/static/../config/settings.py").status_code == 404


def test_cookies_are_secure_behind_tls(daphne, daphne_factory):
    plain = httpx.get(f"{daphne.http_url}/accounts/login/")
    assert "secure" not in plain.headers["set-cookie"].lower()
    tls = daphne_factory(DJANGO_HTTPS="true")
    # As nginx forwards a request that reached it over https.
    r = httpx.get(f"{tls.http_url}/accounts/login/", headers={"X-Forwarded-Proto": "https"})
    assert "; secure" in r.headers["set-cookie"].lower()
    assert "httponly" not in r.headers["set-cookie"].lower()  # the page's JS reads csrftoken

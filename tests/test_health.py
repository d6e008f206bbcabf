from __future__ import annotations

import httpx


def test_healthz_and_readyz(daphne):
    r = httpx.get(daphne.http_url + "/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = httpx.get(daphne.http_url + "/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok"}}

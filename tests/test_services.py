"""The suite runs on the production services in CI: PostgreSQL and Redis, never skipped there.

Outside CI a developer may run the suite on SQLite and the in-memory layer; in CI a
missing service fails here instead of silently testing less.
"""

from __future__ import annotations

import os

import httpx
import pytest
from django.conf import settings
from django.db import connection

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.mark.postgres
@pytest.mark.django_db
def test_database_is_postgresql_when_configured():
    if not IN_CI and not os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL is not set: this run uses SQLite (CI sets it)")
    assert connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.redis
def test_channel_layer_is_redis_when_configured(daphne):
    if not IN_CI and not os.environ.get("REDIS_URL"):
        pytest.skip("REDIS_URL is not set: this run uses the in-memory layer (CI sets it)")
    layer = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    assert layer == "channels_redis.pubsub.RedisPubSubChannelLayer"
    # The served process reaches it too.
    ready = httpx.get(daphne.http_url + "/readyz").json()
    assert ready["checks"]["channel_layer"] == "ok"


def test_blank_service_urls_mean_the_laptop_defaults(tmp_path):
    # An env file with `DATABASE_URL=` and `REDIS_URL=` (as docker-compose leaves them)
    # must start on SQLite and the in-memory layer, not fail on a missing ENGINE.
    import subprocess
    import sys

    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATABASES['default']['ENGINE'], "
        "settings.CHANNEL_LAYERS['default']['BACKEND'])"
    )
    env = {**os.environ, "DATABASE_URL": "", "REDIS_URL": ""}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "django.db.backends.sqlite3",
        "channels.layers.InMemoryChannelLayer",
    ]

"""Liveness and readiness probes for the load balancer and orchestrator."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

# A probe must answer before the balancer's own timeout (nginx and k8s default to a few
# seconds); a dependency slower than this counts as down.
READY_CHECK_TIMEOUT = 2.0


async def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and its event loop answers."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check_channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # A round trip through the layer: works for the in-memory and the Redis layer alike.
    channel = await layer.new_channel("readyz.")
    await layer.send(channel, {"type": "readyz.ping"})
    await layer.receive(channel)


async def readyz(request: HttpRequest) -> JsonResponse:
    """The database and the channel layer are reachable: this process can serve rooms."""
    checks: dict[str, str] = {}
    for name, check in (
        ("database", lambda: sync_to_async(_check_database)()),
        ("channel_layer", _check_channel_layer),
    ):
        try:
            await asyncio.wait_for(check(), timeout=READY_CHECK_TIMEOUT)
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            logger.warning("readyz: %s not ready: %r", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503
    )

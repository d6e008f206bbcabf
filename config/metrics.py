"""GET /metrics: this process's metrics in the Prometheus text format (core/metrics.py).

Never public by default: with ``PARLEY_METRICS_TOKEN`` set, only a scrape that carries it
as a bearer token; otherwise only a direct scrape from loopback or from a network in
``PARLEY_METRICS_ALLOW``. "Direct": daphne runs with ``--proxy-headers`` behind nginx, so
the client address it reports may come from X-Forwarded-For, which any client can write.
A request that carries a forwarding header is therefore never taken as local; Prometheus
scrapes each daphne on its own port, not through nginx (deploy/nginx refuses /metrics).
Refusals are 404s: to anyone else the endpoint does not exist. With ``PARLEY_METRICS=off``
it does not exist for anyone.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from chat.events.delivery import Fanout
from chat.runtime import get_runtime
from core import metrics

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers a proxy sets to name the client it forwards.
_FORWARDED = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


@lru_cache(maxsize=4)
def _networks(allow: tuple[str, ...]) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in allow if n.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"PARLEY_METRICS_ALLOW: {exc}") from exc


def _allowed(request: HttpRequest) -> bool:
    token = settings.PARLEY_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    if any(request.headers.get(h) for h in _FORWARDED):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    if address.is_loopback:
        return True
    return any(address in net for net in _networks(tuple(settings.PARLEY_METRICS_ALLOW)))


def _live_view() -> metrics.LiveView:
    fanout = get_runtime().get(Fanout)
    if fanout is None:
        return metrics.LiveView()
    ws = sse = rooms = 0
    users: set[int] = set()
    for channel in list(fanout.rooms.values()):
        if not channel.subscribers:
            continue
        rooms += 1
        sse += len(channel.sse)
        ws += len(channel.subscribers) - len(channel.sse)
        users.update(sub.user_id for sub in channel.subscribers.values())
    return metrics.LiveView(websocket=ws, sse=sse, rooms=rooms, users=len(users))


metrics.set_live_view(_live_view)


async def scrape(request: HttpRequest) -> HttpResponse:
    if (
        not settings.PARLEY_METRICS  # off: nothing is collected, so nothing is served
        or request.method not in ("GET", "HEAD")
        or not _allowed(request)
    ):
        return HttpResponseNotFound(b"not found\n", content_type="text/plain")
    metrics.refresh_live_view()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

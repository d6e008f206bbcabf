"""Per-user token buckets for sends (in process memory)."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from chat.errors import RateLimited

# Buckets idle for this long are full again and can be forgotten, bounding memory.
_FORGET_AFTER = 600.0

_lock = threading.Lock()
_buckets: dict[int, tuple[float, float]] = {}  # user id -> (tokens, at)


def send_allow(*, user_id: int) -> None:
    """Take one send from ``user_id``'s bucket or raise RateLimited with retry_after."""
    burst = float(settings.PARLEY_SEND_BURST)
    rate = settings.PARLEY_SEND_PER_SECOND
    now = time.monotonic()
    with _lock:
        tokens, at = _buckets.get(user_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            _buckets[user_id] = (tokens, now)
            raise RateLimited("too many messages; slow down", retry_after=(1.0 - tokens) / rate)
        _buckets[user_id] = (tokens - 1.0, now)
        if len(_buckets) > 10000:
            for key, (_, seen) in list(_buckets.items()):
                if now - seen > _FORGET_AFTER:
                    del _buckets[key]

"""The process's runtime: one object per event loop that owns the long-lived parts.

A daphne process serves every connection from one asyncio loop; the parts that live as
long as that loop (the event hub, the room fan-out, presence, the reply manager, voice's
registry of speeches) are created on first use, each once, and are owned here, so that one
``aclose`` shuts them all down in order: the last made is closed first, and every part
makes the parts it needs before itself, so a part never outlives what it uses.

This module is a leaf: it imports nothing of Parley's, so every layer can reach the
runtime without an import cycle. Each layer owns the factory of its own part
(``chat.events.get_hub``, ``chat.events.delivery.get_fanout``,
``chat.presence.get_presence``, ``chat.replies.manager.get_manager``); the runtime only
holds and closes them. Tests run one runtime per test loop, so no asyncio primitive
crosses loops.

The process's identity (``worker_id``) is minted with the runtime: presence records it
beside the names it keeps online, the reply manager leases it, replies record it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)


class Closable(Protocol):
    async def aclose(self) -> None: ...


T = TypeVar("T")


def new_worker_id() -> str:
    """An id no other process (or earlier run of this one) has: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runtime:
    def __init__(self) -> None:
        self.worker_id = new_worker_id()
        # Parts by their key, in the order they were made.
        self._parts: dict[Any, Any] = {}
        self.closed = False

    def part(self, key: Any, make: Callable[[Runtime], T]) -> T:
        """The part stored under ``key``, made by ``make(runtime)`` the first time."""
        try:
            return self._parts[key]
        except KeyError:
            pass
        if self.closed:
            raise RuntimeError("this event loop's runtime is closed")
        made = make(self)
        # ``make`` may have made the parts it needs first: they come earlier in the order.
        self._parts.setdefault(key, made)
        return self._parts[key]

    def get(self, key: Any) -> Any:
        """The part under ``key`` if it has been made, else None."""
        return self._parts.get(key)

    async def aclose(self) -> None:
        """Close every part, the last made first (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for key, part in reversed(list(self._parts.items())):
            closer = getattr(part, "aclose", None)
            if closer is None:
                continue
            try:
                await closer()
            except Exception:  # noqa: BLE001 - the others must still be closed
                logger.exception("closing %r failed", key)
        self._parts.clear()


_runtimes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Runtime] = (
    weakref.WeakKeyDictionary()
)


def get_runtime() -> Runtime:
    """The running loop's runtime (made on first use; a closed one is replaced)."""
    loop = asyncio.get_running_loop()
    runtime = _runtimes.get(loop)
    if runtime is None or runtime.closed:
        runtime = _runtimes[loop] = Runtime()
    return runtime

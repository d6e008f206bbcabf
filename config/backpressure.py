"""Slow WebSocket clients: a bounded outbound buffer per connection, then close 4408.

Daphne writes every frame the application sends straight into the connection's Twisted
transport, which buffers without limit when the client stops reading: one stalled
client would grow the server's memory for as long as the room talks. Daphne has no
setting for this and the application cannot see the buffer, so Parley wraps daphne's
``serverSend``: past ``PARLEY_WS_MAX_BUFFER`` unsent bytes the connection gets close code
4408 (PROTOCOL.md: "the client read too slowly and fell behind; reconnect with after")
and nothing more is queued for it. If the client does not answer the close within
``SLOW_CLOSE_GRACE``, autobahn drops the TCP connection, freeing the buffer. Other
connections are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4408
# How long a cut-off client has to read its backlog and reach the 4408 close frame before
# the TCP connection is dropped (autobahn's default, 1 s, would drop it first and the
# client would see 1006 and not know to resume). Memory stays bounded meanwhile: nothing
# more is queued for the connection.
SLOW_CLOSE_GRACE = 30.0


def unsent_bytes(transport: Any) -> int:
    """Bytes written to a Twisted TCP transport that the kernel has not taken yet."""
    data = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    pending = getattr(transport, "_tempDataLen", 0)
    return max(0, len(data) - offset) + pending


def install(limit: int) -> None:
    """Wrap daphne's WebSocket send with the buffer limit (idempotent)."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not running under daphne
        return
    if getattr(WebSocketProtocol, "_parley_backpressure", False):
        return
    original = WebSocketProtocol.serverSend

    def server_send(self: Any, content: Any, binary: bool = False) -> None:
        if getattr(self, "_parley_too_slow", False):
            return
        if self.state == self.STATE_OPEN and unsent_bytes(self.transport) > limit:
            self._parley_too_slow = True
            self.closeHandshakeTimeout = SLOW_CLOSE_GRACE
            logger.warning("closing a WebSocket that fell %d bytes behind (4408)", limit)
            self.sendClose(code=CLOSE_TOO_SLOW, reason="too slow; reconnect with after")
            return
        original(self, content, binary)

    WebSocketProtocol.serverSend = server_send
    WebSocketProtocol._parley_backpressure = True

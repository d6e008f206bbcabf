"""Two things daphne cannot do for Parley, added to its WebSocket protocol at start-up.

1. The contract's close code 1009 ("frame too big"): autobahn's ``sendClose`` accepts only
   1000 and 3000-4999 from an application, so daphne turns the consumer's
   ``close(code=1009)`` into a crash (1011). The patched ``serverClose`` sends a close frame
   with 1009 itself.

2. Slow WebSocket clients: a bounded outbound buffer per connection, then close 4408.

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


# Protocol-level close codes (RFC 6455 section 7.4.1) the application may close with.
PROTOCOL_CLOSE_CODES = frozenset({1008, 1009, 1011})


def install(limit: int) -> None:
    """Patch daphne's WebSocket protocol (idempotent; a no-op outside daphne)."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not running under daphne
        return
    if getattr(WebSocketProtocol, "_parley_patched", False):
        return
    original = WebSocketProtocol.serverSend
    original_close = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, reasonUtf8=None, isReply=False)
            return
        original_close(self, code)

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
    WebSocketProtocol.serverClose = server_close
    WebSocketProtocol._parley_patched = True

"""What core/fastpath.py needs of daphne, autobahn and Twisted, checked before it patches
them (``core.fastpath.install``, at start-up).

The fast path leans on private names: Twisted's transport buffer fields and web request
state, autobahn's prepared frames and send queue, daphne's protocol methods. A rename
would not fail loudly by itself: ``unsent_bytes`` would read a missing buffer as empty and
the 4408 bound would silently disappear, or daphne would route its sends around the
patch. So ``install`` refuses to start (``FastPathUnsupported``, naming the version or
the missing name) unless the installed versions are ones the tests passed on
(``SUPPORTED_VERSIONS``, pinned in requirements.txt) and every name is where the patch
expects it.
"""

from __future__ import annotations

import importlib.metadata
import socket
from collections.abc import Iterable
from typing import Any, Final, cast

from core.fastpath import unsent_bytes


class FastPathUnsupported(RuntimeError):
    """daphne, autobahn or Twisted is not what core/fastpath.py patches: the server refuses
    to start (``core.fastpath.install`` raises this)."""


# Versions tests/core/test_fastpath.py has passed on; requirements.txt pins one of each.
# Add a version only after running those tests on it.
SUPPORTED_VERSIONS: Final[dict[str, frozenset[str]]] = {
    "daphne": frozenset({"4.2.3"}),
    "autobahn": frozenset({"26.11.1"}),
    "Twisted": frozenset({"26.10.0"}),
}

_HOW_TO_FIX = (
    "Install the versions pinned in requirements.txt, or run tests/core/test_fastpath.py "
    "on this one, update core/fastpath.py until it passes, and add it to "
    "core.fastpath_check.SUPPORTED_VERSIONS."
)


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def check_versions() -> None:
    """Refuse a daphne, autobahn or Twisted not in ``SUPPORTED_VERSIONS``: a name can keep
    its spelling and change its meaning (a buffer Twisted no longer fills), which no
    hasattr sees."""
    for distribution, versions in SUPPORTED_VERSIONS.items():
        found = installed_version(distribution)
        if found not in versions:
            raise FastPathUnsupported(
                f"core/fastpath.py patches private parts of {distribution} and is tested "
                f"with {distribution} {', '.join(sorted(versions))}; {distribution} {found} "
                f"is installed. {_HOW_TO_FIX}"
            )


def _require(owner: object, where: str, distribution: str, names: Iterable[str]) -> None:
    for name in names:
        if not hasattr(owner, name):
            raise FastPathUnsupported(
                f"{distribution} {installed_version(distribution)} has no {where}.{name}, "
                f"which core/fastpath.py needs (prepared frames, direct SSE writes and the "
                f"slow-reader bound rely on it). {_HOW_TO_FIX}"
            )


class _NoReactor:
    """Enough of a reactor for a transport that is built and written to, never run."""

    def addReader(self, reader: object) -> None:  # noqa: N802 (Twisted's names)
        pass

    def addWriter(self, writer: object) -> None:  # noqa: N802
        pass

    def removeReader(self, reader: object) -> None:  # noqa: N802
        pass

    def removeWriter(self, writer: object) -> None:  # noqa: N802
        pass


class _NoChannel:
    transport = None

    def getPeer(self) -> None:  # noqa: N802
        return None

    def getHost(self) -> None:  # noqa: N802
        return None


class _FactoryDefaults:
    """A WebSocket factory whose every option is off (no timers are started)."""

    isServer = True

    def __getattr__(self, name: str) -> int:
        return 0


def check_private_names() -> None:
    """Refuse to start unless every private name the patch uses is where it expects.

    Methods and class attributes are looked up on their classes. Fields that exist only
    once ``__init__`` (or autobahn's ``_connectionMade``) ran are looked up on real
    instances built here with no network and no reactor: a Twisted TCP transport over an
    unconnected socket, a Twisted web request, an autobahn prepared message and a daphne
    WebSocket protocol. The transport is then written to, and ``unsent_bytes`` must see
    the bytes: a Twisted that buffers somewhere else would otherwise lift the 4408 bound
    without a word.
    """
    import autobahn.websocket.protocol as ws
    from daphne.http_protocol import WebRequest
    from daphne.server import Server as DaphneServer
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol
    from twisted.web import http

    _require(ws, "autobahn.websocket.protocol", "autobahn", ("PreparedMessage", "pformat"))
    _require(
        ws.WebSocketProtocol,
        "autobahn.websocket.protocol.WebSocketProtocol",
        "autobahn",
        (
            "STATE_OPEN",
            "STATE_CLOSING",
            "STATE_CLOSED",
            "sendData",
            "sendClose",
            "sendCloseFrame",
            "sendPreparedMessage",
        ),
    )
    _require(
        WebSocketProtocol,
        "daphne.ws_protocol.WebSocketProtocol",
        "daphne",
        ("serverSend", "serverClose", "handle_reply"),
    )
    _require(WebRequest, "daphne.http_protocol.WebRequest", "daphne", ("handle_reply",))
    _require(DaphneServer, "daphne.server.Server", "daphne", ("create_application",))
    _require(tcp, "twisted.internet.tcp", "Twisted", ("Server",))

    protocol = WebSocketProtocol()
    protocol.factory = _FactoryDefaults()
    protocol.peer = "start-up check"
    protocol._connectionMade()
    _require(
        protocol,
        "daphne.ws_protocol.WebSocketProtocol()",
        "autobahn",
        ("send_queue", "state", "closeHandshakeTimeout"),
    )

    prepared = ws.PreparedMessage(b"probe", False, False, True)
    _require(
        prepared, "autobahn.websocket.protocol.PreparedMessage()", "autobahn", ("payloadHybi",)
    )
    if prepared.payloadHybi != b"\x81\x05probe":
        raise FastPathUnsupported(
            f"autobahn {installed_version('autobahn')} prepares a 5-byte text frame as "
            f"{prepared.payloadHybi!r}, not as one unmasked frame: core/fastpath.py writes "
            f"it to sockets as it is. {_HOW_TO_FIX}"
        )

    request = http.Request(cast(Any, _NoChannel()))
    _require(
        request,
        "twisted.web.http.Request()",
        "Twisted",
        ("finished", "_disconnected", "startedWriting", "chunked", "channel", "responseHeaders"),
    )

    with socket.socket() as sock:
        transport = tcp.Server(
            sock,
            cast(Any, Protocol()),
            ("127.0.0.1", 0),
            cast(Any, None),
            0,
            cast(Any, _NoReactor()),
        )
        _require(
            transport,
            "twisted.internet.tcp.Server()",
            "Twisted",
            (
                "dataBuffer",
                "_tempDataBuffer",
                "_tempDataLen",
                "offset",
                "socket",
                "connected",
                "disconnecting",
                "write",
                "abortConnection",
                "setTcpNoDelay",
            ),
        )
        transport.write(b"probe")
        if unsent_bytes(transport) != len(b"probe"):
            raise FastPathUnsupported(
                f"Twisted {installed_version('Twisted')} keeps a write to a TCP transport "
                f"where core/fastpath.py's unsent_bytes does not look (dataBuffer, offset, "
                f"_tempDataLen): the slow-reader bound (4408) would never trigger. "
                f"{_HOW_TO_FIX}"
            )

"""An optional OpenTelemetry trace per AI turn (``PARLEY_TRACING=on``; off by default).

One trace per assistant reply, never one span per connection or per token:

- ``parley.turn`` (the root): from the send that asked for the reply (the message
  accepted) to the reply's end, with the room, the reply's message id, the assistant's
  handle, the model, the end state and stop reason, and the tokens as attributes (no
  message text, ever);
- ``parley.turn.queued``: from the send until the reply's turn in the room's line comes;
- ``parley.model``: the model request, from its start to its last token, with a
  ``first_token`` event (and the reply's tokens); its status is an error when the model
  failed the request.

Off, it costs one boolean check per turn (``turn_begin`` returns None and each hook is
behind ``if run.trace is not None``, once per turn, the first token's inside the branch
that sees the first token): opentelemetry is never imported, so an installation without
the extra runs unchanged. The part that imports opentelemetry is ``core/otel.py``,
imported only from here and only when tracing is on.

Context does not cross a queue: a reply runs in the process whose send queued it (the
room's Redis line only orders the replies of every process, chat/replies/queue.py), so
the trace rides on the reply's run object itself, and no trace context is stored or
published. The send's time is taken when the send is accepted and becomes the root's
start.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from core.otel import Turn

# What to tell an operator who turned tracing on without the extra.
INSTALL_HINT = (
    "Install the extra: pip install 'opentelemetry-api==1.45.2' 'opentelemetry-sdk==1.45.2' "
    "(pip install '.[otel]'), or set PARLEY_TRACING=off."
)


def enabled() -> bool:
    return bool(settings.PARLEY_TRACING)


def turn_begin(
    *,
    sent_ns: int,
    room_id: int,
    message_id: int,
    assistant: str,
    model: str,
) -> Turn | None:
    """The trace of one reply asked by a send accepted at ``sent_ns`` (``time.time_ns()``);
    None when tracing is off (the one check a turn pays)."""
    if not settings.PARLEY_TRACING:
        return None
    from core.otel import Turn

    return Turn.begin(
        sent_ns=sent_ns, room_id=room_id, message_id=message_id, assistant=assistant, model=model
    )


def debug_state() -> dict[str, Any]:
    """For the process's SIGUSR1 debug dump (core/fastpath.py, PARLEY_FASTPATH_STATS=1):
    whether Parley's tracing side (``core.otel``) and opentelemetry were ever imported, and
    the spans the test exporter holds (``PARLEY_TRACING_EXPORTER=memory``). Reads
    ``sys.modules``; imports nothing.

    (redis-py imports ``opentelemetry.sdk.metrics`` when it is installed, for its own
    optional observability, whatever Parley's setting: with the extra installed,
    opentelemetry is in every process from its start. Off, Parley imports none of it: the
    tests run that case with opentelemetry made unimportable.)"""
    otel = sys.modules.get("core.otel")
    state: dict[str, Any] = {
        "opentelemetry_imported": "opentelemetry" in sys.modules,
        "tracing_loaded": otel is not None,
    }
    if otel is not None:
        state["spans"] = otel.memory_spans()
    return state


DEBUG_LOG_PREFIX = "tracing state #"


def install() -> None:
    """At start-up (config/asgi.py): add the tracing state to the SIGUSR1 debug dump."""
    from core import fastpath

    fastpath.debug_dump(DEBUG_LOG_PREFIX, debug_state)

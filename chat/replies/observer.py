"""The seam through which other apps follow a reply's life (voice speaks it).

``chat.replies`` knows nothing of speech. An app registers an observer factory at start-up
(``register_observer``, from its ``AppConfig.ready``); each reply run asks every factory
for an observer when it starts, and tells those it got what happens to the reply, in
order:

- ``shown(text)``: text members have just been shown (never ahead of them);
- ``paused()`` / ``resumed()``: the reply's delivery was held, and let go;
- ``complete()``: the text is final (complete, or failed): finish with what was shown;
- ``cancel()``: the reply is being stopped or abandoned; awaited before ``stopped`` goes
  out, so nothing an observer sends about the reply follows the stop;
- ``stopped(heard_ms)``: the stop is saved, and the member who stopped it had played
  ``heard_ms`` of its audio (only when they said so).

A factory also gets ``adopt``, to hand the manager a task that may outlive the reply's
text (its speech), which the manager then cancels and awaits on shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol


class ReplyObserver(Protocol):
    def shown(self, text: str) -> None: ...

    def paused(self) -> None: ...

    def resumed(self) -> None: ...

    def complete(self) -> None: ...

    async def cancel(self) -> None: ...

    async def stopped(self, heard_ms: int) -> None: ...


@dataclass(frozen=True)
class ReplyStart:
    """What an observer is told of a reply as it starts."""

    room_id: int
    message_id: int
    voice: str  # the reply's voice mode (chat.models.VoiceMode)
    paused: bool  # it starts held (paused while it was queued)
    # The TTS voice of the reply's assistant (Assistant.voice); "": the engine's default.
    voice_name: str = ""


Adopt = Callable[[Coroutine[Any, Any, None]], None]
ObserverFactory = Callable[[ReplyStart, Adopt], "ReplyObserver | None"]

_factories: list[ObserverFactory] = []


def register_observer(factory: ObserverFactory) -> None:
    """Follow every reply from now on (call once, at app start-up)."""
    if factory not in _factories:
        _factories.append(factory)


def observers_for(start: ReplyStart, adopt: Adopt) -> list[ReplyObserver]:
    observers = []
    for factory in _factories:
        observer = factory(start, adopt)
        if observer is not None:
            observers.append(observer)
    return observers

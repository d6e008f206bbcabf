"""Loopback fake of Qwen-TTS on Alibaba Cloud Model Studio (DashScope), for tests.

FakeQwenServer: the two APIs described in ``voice/engines/qwen/``, each on its own port of
127.0.0.1, in one event loop (the test's, ``async with``; or a background thread's,
``with`` / ``start()``):

- ``server.http`` (:class:`~tests.support.tts.qwen_http.QwenHTTPServer`, ``base_url``):
  the HTTP API, with SSE, and the store its audio URLs point to. Scripted with
  ``server.http.script(QwenScenario...)``; records ``server.http.requests``.
- ``server.realtime`` (:class:`~tests.support.tts.qwen_realtime.QwenRealtimeServer`,
  ``realtime_url``): the realtime WebSocket. Scripted with
  ``server.realtime.script(QwenRealtimeScenario...)``; records ``server.realtime.events``.

Both want the same bearer key (``api_key``). Their modules say what each does.
"""

from __future__ import annotations

from typing import Self

from tests.support.loopback import ServedInThread
from tests.support.tts.qwen_http import (
    GENERATION_PATH,
    QWEN_SAMPLE_RATE,
    QwenHTTPServer,
    QwenRequest,
    QwenScenario,
)
from tests.support.tts.qwen_realtime import (
    REALTIME_PATH,
    QwenEvent,
    QwenRealtimeScenario,
    QwenRealtimeServer,
    QwenSocket,
)


class FakeQwenServer(ServedInThread):
    def __init__(
        self,
        default: QwenScenario | None = None,
        realtime_default: QwenRealtimeScenario | None = None,
        *,
        api_key: str = "sk-test-qwen",
        realtime_model: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__("fake-qwen-server")
        self.api_key = api_key
        self.http = QwenHTTPServer(default, api_key=api_key, host=host)
        self.realtime = QwenRealtimeServer(
            realtime_default, api_key=api_key, model=realtime_model, host=host
        )

    @property
    def base_url(self) -> str:
        return self.http.base_url

    @property
    def realtime_url(self) -> str:
        return self.realtime.url

    @property
    def protocol_errors(self) -> list[str]:
        return self.realtime.protocol_errors

    async def astart(self) -> Self:
        await self.http.astart()
        await self.realtime.astart()
        return self

    async def astop(self) -> None:
        await self.realtime.astop()
        await self.http.astop()


__all__ = [
    "GENERATION_PATH",
    "QWEN_SAMPLE_RATE",
    "REALTIME_PATH",
    "FakeQwenServer",
    "QwenEvent",
    "QwenRealtimeScenario",
    "QwenRequest",
    "QwenScenario",
    "QwenSocket",
]

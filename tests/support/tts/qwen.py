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

from types import TracebackType

from tests.support.loopback import ThreadRunner
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


class FakeQwenServer:
    def __init__(
        self,
        default: QwenScenario | None = None,
        realtime_default: QwenRealtimeScenario | None = None,
        *,
        api_key: str = "sk-test-qwen",
        realtime_model: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.http = QwenHTTPServer(default, api_key=api_key, host=host)
        self.realtime = QwenRealtimeServer(
            realtime_default, api_key=api_key, model=realtime_model, host=host
        )
        self._runner = ThreadRunner("fake-qwen-server", self.astart, self.astop)

    @property
    def base_url(self) -> str:
        return self.http.base_url

    @property
    def realtime_url(self) -> str:
        return self.realtime.url

    @property
    def protocol_errors(self) -> list[str]:
        return self.realtime.protocol_errors

    async def astart(self) -> FakeQwenServer:
        await self.http.astart()
        await self.realtime.astart()
        return self

    async def astop(self) -> None:
        await self.realtime.astop()
        await self.http.astop()

    async def __aenter__(self) -> FakeQwenServer:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def start(self) -> FakeQwenServer:
        self._runner.start()
        return self

    def stop(self) -> None:
        self._runner.stop()

    def __enter__(self) -> FakeQwenServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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

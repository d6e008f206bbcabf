"""A loopback OpenAI-compatible speech-to-text server: ``POST /v1/audio/transcriptions``.

It speaks the vendor's protocol (a multipart form with ``file`` and ``model``; a JSON
``{"text": ...}`` answer, or an OpenAI error body), records each upload (the WAV it was
sent, decoded), and answers with the transcript the test scripted.
"""

from __future__ import annotations

import email.parser
import email.policy
import http
import io
import json
import threading
import wave
from dataclasses import dataclass, field

from tests.support.loopback import Connection, LoopbackHTTPServer

_MAX_HEAD_BYTES = 64 * 1024


@dataclass
class Upload:
    headers: dict[str, str]
    fields: dict[str, str]
    filename: str
    pcm: bytes
    sample_rate: int


@dataclass
class FakeTranscriptionServer(LoopbackHTTPServer):
    transcript: str = "hello from the fake"
    status: int = 200
    raw_answer: bytes | None = None  # sent as is instead of JSON (malformed answers)
    uploads: list[Upload] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(name="fake-stt", host="127.0.0.1", port=0)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve_one(self, conn: Connection) -> bool:
        head = await conn.read_until(b"\r\n\r\n", _MAX_HEAD_BYTES)
        if head is None:
            return False
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await conn.read_exactly(int(headers.get("content-length", "0") or "0"))
        if body is None:
            return False
        if method != "POST" or not target.endswith("/audio/transcriptions"):
            return await self._answer(conn, 404, _error(f"Unknown URL {target}"))
        if self.status != 200:
            return await self._answer(conn, self.status, _error("Incorrect API key provided"))
        upload = _parse_form(headers, body)
        with self._lock:
            self.uploads.append(upload)
        if self.raw_answer is not None:
            return await self._send(conn, 200, "text/plain", self.raw_answer)
        return await self._answer(conn, 200, {"text": self.transcript})

    async def _answer(self, conn: Connection, status: int, payload: object) -> bool:
        return await self._send(conn, status, "application/json", json.dumps(payload).encode())

    async def _send(self, conn: Connection, status: int, kind: str, data: bytes) -> bool:
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return await conn.send(head.encode() + data)


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


def _parse_form(headers: dict[str, str], body: bytes) -> Upload:
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    form = parser.parsebytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
    fields: dict[str, str] = {}
    filename, wav_bytes = "", b""
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        if part.get_filename():
            filename, wav_bytes = str(part.get_filename()), payload
        else:
            fields[str(name)] = payload.decode()
    with wave.open(io.BytesIO(wav_bytes), "rb") as wav:
        pcm, rate = wav.readframes(wav.getnframes()), wav.getframerate()
    return Upload(headers=headers, fields=fields, filename=filename, pcm=pcm, sample_rate=rate)

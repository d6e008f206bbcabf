"""A loopback OpenAI-compatible speech-to-text server: ``POST /v1/audio/transcriptions``.

It speaks the vendor's protocol (a multipart form with ``file`` and ``model``; a JSON
``{"text": ...}`` answer, or an OpenAI error body), records each upload (the WAV it was
sent, decoded), and answers with the transcript the test scripted.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import threading
import wave
from dataclasses import dataclass, field

from tests.support.loopback import Connection, LoopbackHTTPServer
from tests.support.tts.common import read_request, send_json


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
        request = await read_request(conn)
        if request is None:
            return False
        if request.method != "POST" or not request.path.endswith("/audio/transcriptions"):
            return await send_json(conn, 404, _error(f"Unknown URL {request.target}"))
        if self.status != 200:
            return await send_json(conn, self.status, _error("Incorrect API key provided"))
        upload = _parse_form(request.headers, request.raw_body)
        with self._lock:
            self.uploads.append(upload)
        if self.raw_answer is not None:
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(self.raw_answer)}\r\n\r\n"
            )
            return await conn.send(head.encode() + self.raw_answer)
        return await send_json(conn, 200, {"text": self.transcript})


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

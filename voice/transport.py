"""Voice's WebSocket actions, added to the room consumer at start-up (chat/extensions.py).

- ``speech`` (``start`` / ``end`` / ``cancel``) and the binary PCM frames between them: an
  utterance, transcribed and sent as the member's message (voice/conversation.py);
  starting one over a reply being spoken to the member is a barge-in.
- ``played``: how far the member has played each reply's audio, kept per connection, so a
  stop keeps what they heard (``heard_ms``).
"""

from __future__ import annotations

from typing import Any

from chat.errors import BadRequest, SpeechTooLong
from chat.extensions import EXTENSIONS, Connection
from chat.ratelimit import send_allow
from voice.conversation import (
    PCM_FORMAT,
    Playback,
    Utterance,
    barge_in,
    parse_played,
    parse_sample_rate,
    speech_send,
)
from voice.reply_speech import speech_interrupt

# This app's keys in a connection's extension state.
UTTERANCE = "voice.utterance"  # the utterance being spoken (between `start` and `end`)
PLAYBACK = "voice.playback"  # made at the first `played` report: most members never play


def _playback(conn: Connection) -> Playback | None:
    playback: Playback | None = conn.state.get(PLAYBACK)
    return playback


async def action_played(conn: Connection, frame: dict[str, Any], request_id: object) -> None:
    stream, ms = parse_played(frame)
    playback = _playback(conn)
    if playback is None:
        playback = conn.state[PLAYBACK] = Playback()
    playback.report(stream, ms)


async def action_speech(conn: Connection, frame: dict[str, Any], request_id: object) -> None:
    state = frame.get("state")
    if state == "start":
        if frame.get("format", PCM_FORMAT) != PCM_FORMAT:
            raise BadRequest(f"format must be {PCM_FORMAT}")
        sample_rate = parse_sample_rate(frame.get("sample_rate", 16000))
        await send_allow(user_id=conn.user.pk)  # one utterance takes one send's turn
        conn.state[UTTERANCE] = Utterance(sample_rate=sample_rate, request_id=request_id)
        await conn.send_json({"type": "speech", "state": "listening", "id": request_id})
        # Speaking over a reply that is being spoken stops it (barge-in).
        await barge_in(user=conn.user, room=conn.room, playback=_playback(conn) or Playback())
    elif state == "end":
        utterance: Utterance | None = conn.state.pop(UTTERANCE, None)
        if utterance is None:
            raise BadRequest("no speech was started")
        message, _reply = await speech_send(
            user=conn.user,
            room=conn.room,
            pcm=bytes(utterance.pcm),
            sample_rate=utterance.sample_rate,
            client_id=frame.get("client_id"),
            ask_ai=frame.get("ask_ai"),
            voice=frame.get("voice"),
            rate_checked=True,
        )
        await conn.send_json(
            {
                "type": "speech",
                "state": "transcribed",
                "id": request_id,
                "text": message["text"],
                "message_id": message["id"],
            }
        )
    elif state == "cancel":
        conn.state.pop(UTTERANCE, None)
        await conn.send_json({"type": "speech", "state": "cancelled", "id": request_id})
    else:
        raise BadRequest("state must be start, end or cancel")


async def speech_audio(conn: Connection, data: bytes) -> None:
    """A binary frame: the next PCM of the utterance being spoken."""
    utterance: Utterance | None = conn.state.get(UTTERANCE)
    if utterance is None:
        raise BadRequest("binary frames are speech audio: send speech start first")
    try:
        utterance.add(data)
    except SpeechTooLong as exc:
        # Answered as the utterance's `start` was (its id), and the utterance dropped.
        del conn.state[UTTERANCE]
        await conn.error(exc.code, exc.detail, utterance.request_id)


def heard_ms(conn: Connection, message_id: str | int) -> int | None:
    """How far this connection had played reply ``message_id``'s audio, if it said."""
    playback = _playback(conn)
    stream = _stream_of(message_id)
    if playback is None or stream is None:
        return None
    return playback.heard_ms(stream)


def _stream_of(message_id: str | int) -> int | None:
    """The audio stream id of reply ``message_id`` (voice/speech.py), if it is one."""
    if isinstance(message_id, str):
        if not (message_id.isascii() and message_id.isdigit() and len(message_id) <= 18):
            return None
        message_id = int(message_id)
    return message_id & 0xFFFFFFFF if message_id > 0 else None


def install() -> None:
    EXTENSIONS.actions["speech"] = action_speech
    EXTENSIONS.actions["played"] = action_played
    EXTENSIONS.binary = speech_audio
    EXTENSIONS.heard_ms = heard_ms
    EXTENSIONS.stop_heard = speech_interrupt

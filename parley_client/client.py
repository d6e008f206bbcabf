"""The HTTP side of Parley and the factory for live room sessions.

::

    async with Client("http://127.0.0.1:8000", token=TOKEN) as client:
        rooms = await client.rooms()
        async with client.room("lobby") as room:
            ...

Every method raises a typed :class:`~parley_client.errors.ParleyError` on failure;
``Unreachable`` when the server cannot be reached at all.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from parley_client.errors import (
    ConnectionLost,
    ParleyError,
    ServerError,
    Unreachable,
    error_from_body,
    network_reason,
)
from parley_client.models import Assistant, Message, Models, Room, SearchHit, SearchPage, Sent
from parley_client.room import DEFAULT_BUFFER, Backoff, RoomSession, Transport
from parley_client.transport import room_path

__all__ = ["Client", "MessagePage"]

# Connect / request timeout for HTTP calls and the WebSocket handshake: long enough for a
# loaded server, short enough that "unreachable" is said before a person gives up.
DEFAULT_TIMEOUT = 10.0
# WebSocket keepalive: a protocol ping this often, and no pong within as long means the
# connection is dead (a half-open TCP connection after a network change). The page uses 20 s.
DEFAULT_PING_INTERVAL = 20.0
# A waiting send (``wait=True``) is held by the server up to PARLEY_WAIT_TIMEOUT (120 s by
# default), then answered 504; allow that much and a margin.
WAIT_SEND_TIMEOUT = 130.0


class MessagePage:
    """``GET /api/rooms/<slug>/messages``: ``messages`` oldest first and the room's ``head``."""

    __slots__ = ("head", "messages")

    def __init__(self, messages: list[Message], head: int) -> None:
        self.messages = messages
        self.head = head


class Client:
    """A Parley server, reached with an API token.

    ``transport`` is the default for :meth:`room`: ``"websocket"``, ``"sse"`` (SSE for
    events, HTTP for sends and controls) or ``"auto"`` (the WebSocket, falling back to SSE
    when its handshake fails). ``backoff`` sets how sessions reconnect.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        transport: Transport = "websocket",
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        backoff: Backoff | None = None,
    ) -> None:
        if transport not in ("websocket", "sse", "auto"):
            raise ValueError("transport must be 'websocket', 'sse' or 'auto'")
        self.url = url.rstrip("/")
        self.token = token
        self.transport: Transport = transport
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.backoff = backoff or Backoff()
        headers = {"User-Agent": "parley-client", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, follow_redirects=False
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- live rooms ----------------------------------------------------------------------

    def room(
        self,
        slug: str,
        *,
        transport: Transport | None = None,
        after: int | None = None,
        audio: bool = False,
        buffer: int | None = DEFAULT_BUFFER,
        backoff: Backoff | None = None,
    ) -> RoomSession:
        """A live session in room ``slug`` (use it with ``async with``).

        ``after``: replay the durable events after that seq first (default: live from
        now). ``audio``: receive spoken replies. ``buffer``: events kept for ``events()``
        (0: keep none, for programs that only send and wait for replies).
        """
        return RoomSession(
            self,
            slug,
            transport=transport or self.transport,
            after=after,
            audio=audio,
            buffer=buffer,
            backoff=backoff,
        )

    # --- rooms ---------------------------------------------------------------------------

    async def rooms(self) -> list[Room]:
        """The rooms you can see: yours, the ones you joined and the public ones."""
        body = await self._call("GET", "/api/rooms")
        return [Room.from_dict(r) for r in _field(body, "rooms", list)]

    async def get_room(self, slug: str) -> Room:
        return Room.from_dict(await self._call("GET", f"/api/rooms/{room_path(slug)}"))

    async def create_room(
        self,
        name: str,
        *,
        visibility: str | None = None,
        assistant: str | None = None,
        voice: str | None = None,
        system_prompt: str | None = None,
    ) -> Room:
        payload = _drop_none(
            name=name,
            visibility=visibility,
            assistant=assistant,
            voice=voice,
            system_prompt=system_prompt,
        )
        return Room.from_dict(await self._call("POST", "/api/rooms", json=payload))

    async def join(self, slug: str) -> Room:
        """Join a public room."""
        path = f"/api/rooms/{room_path(slug)}/join"
        return Room.from_dict(await self._call("POST", path, room_scope=True))

    async def add_member(self, slug: str, username: str) -> Room:
        """Add a member to a room you own."""
        path = f"/api/rooms/{room_path(slug)}/members"
        return Room.from_dict(await self._call("POST", path, json={"username": username}))

    # --- models and assistants (extension, docs/protocol.md "Assistants") ---------------

    async def models(self) -> Models:
        """``GET /api/models``: the models the server's providers list, for an assistant's
        ``model``, and the providers that could not be read."""
        return Models.from_dict(await self._call("GET", "/api/models"))

    async def assistants(self, slug: str) -> list[Assistant]:
        """A room's assistants with their settings (members may read them)."""
        path = f"/api/rooms/{room_path(slug)}/assistants"
        body = await self._call("GET", path, room_scope=True)
        return [Assistant.from_dict(a) for a in _field(body, "assistants", list)]

    async def create_assistant(
        self,
        slug: str,
        handle: str,
        *,
        name: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        mode: str | None = None,
        avatar: str | None = None,
        voice: str | None = None,
    ) -> Assistant:
        """Create a room assistant (the room's owner, or staff). ``model`` is
        ``"<provider>/<model id>"`` as :meth:`models` lists it."""
        payload = _drop_none(
            handle=handle,
            name=name,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            mode=mode,
            avatar=avatar,
            voice=voice,
        )
        return await self._assistant_call("POST", slug, None, payload)

    async def add_shared_assistant(
        self, slug: str, handle: str, *, mode: str | None = None
    ) -> Assistant:
        """Add one of staff's shared assistants to a room."""
        return await self._assistant_call("POST", slug, None, _drop_none(shared=handle, mode=mode))

    async def update_assistant(self, slug: str, handle: str, **changes: Any) -> Assistant:
        """Change a room's assistant: any of the fields :meth:`create_assistant` takes
        (a field given as None is left as it is)."""
        return await self._assistant_call("PATCH", slug, handle, _drop_none(**changes))

    async def delete_assistant(self, slug: str, handle: str) -> None:
        """Remove an assistant from a room (its replies stay, under its name)."""
        path = f"/api/rooms/{room_path(slug)}/assistants/{room_path(handle)}"
        await self._raw("DELETE", path)

    async def _assistant_call(
        self, method: str, slug: str, handle: str | None, payload: dict[str, Any]
    ) -> Assistant:
        path = f"/api/rooms/{room_path(slug)}/assistants"
        if handle is not None:
            path += f"/{room_path(handle)}"
        body = await self._call(method, path, json=payload)
        # The assistant itself, or wrapped as {"assistant": {...}}: both read the same.
        inner = body.get("assistant")
        return Assistant.from_dict(inner if isinstance(inner, dict) else body)

    # --- messages ------------------------------------------------------------------------

    async def messages(
        self,
        slug: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> MessagePage:
        params = _drop_none(before=before, after=after, limit=limit)
        body = await self._call(
            "GET", f"/api/rooms/{room_path(slug)}/messages", params=params, room_scope=True
        )
        messages = [Message.from_dict(m) for m in _field(body, "messages", list)]
        return MessagePage(messages, int(body.get("head") or 0))

    async def search(self, slug: str, q: str, *, before: str | None = None) -> SearchPage:
        """Extension: the room's messages matching ``q``, newest first, a page at a time
        (``GET /api/rooms/<slug>/search``; docs/protocol.md "Search"). For older matches
        pass ``before=page.next_before``. Deleted messages never match. ``q`` is one line
        (on PostgreSQL: words, ``"a phrase"``, ``-without``, ``or``)."""
        params = _drop_none(q=q, before=before)
        body = await self._call(
            "GET", f"/api/rooms/{room_path(slug)}/search", params=params, room_scope=True
        )
        hits = tuple(SearchHit.from_dict(h) for h in _field(body, "results", list))
        return SearchPage(hits=hits, more=body.get("more") is True)

    async def message(self, message_id: str) -> Message:
        return Message.from_dict(await self._call("GET", f"/api/messages/{_path_id(message_id)}"))

    async def send(
        self,
        slug: str,
        text: str,
        *,
        client_id: str | None = None,
        ask_ai: bool | None = None,
        voice: str | None = None,
        wait: bool = False,
    ) -> Sent:
        """Send over plain HTTP. With ``wait=True`` it returns once the reply has ended,
        with its whole text (``Sent.reply``); no live connection needed."""
        payload = _drop_none(text=text, client_id=client_id, ask_ai=ask_ai, voice=voice)
        if wait:
            payload["wait"] = True
        body = await self._call(
            "POST",
            f"/api/rooms/{room_path(slug)}/messages",
            json=payload,
            room_scope=True,
            request_timeout=WAIT_SEND_TIMEOUT if wait else None,
        )
        reply = body.get("reply")
        replies = body.get("replies")
        return Sent(
            Message.from_dict(body.get("message")),
            Message.from_dict(reply) if reply else None,
            tuple(Message.from_dict(r) for r in replies) if isinstance(replies, list) else (),
        )

    async def control(self, action: str, message_id: str) -> Message:
        """``pause``, ``resume`` or ``stop`` a reply over HTTP; returns it as it now is."""
        if action not in ("pause", "resume", "stop"):
            raise ValueError("action must be pause, resume or stop")
        body = await self._call("POST", f"/api/messages/{_path_id(message_id)}/{action}")
        return Message.from_dict(_field(body, "message", dict))

    async def pause(self, message_id: str) -> Message:
        return await self.control("pause", message_id)

    async def regenerate(self, message_id: str) -> Message:
        """Extension: another answer, a new version of the reply ``message_id`` (the
        reply's id or any version's); returns the new version as queued. It streams to
        the room like any reply and becomes the current version."""
        body = await self._call("POST", f"/api/messages/{_path_id(message_id)}/regenerate")
        return Message.from_dict(_field(body, "message", dict))

    async def pick_version(self, message_id: str) -> Message:
        """Extension: make version ``message_id`` its reply's current one; returns the
        reply as it now is (its ``current``)."""
        body = await self._call("POST", f"/api/messages/{_path_id(message_id)}/pick")
        return Message.from_dict(_field(body, "message", dict))

    async def resume(self, message_id: str) -> Message:
        return await self.control("resume", message_id)

    async def stop(self, message_id: str) -> Message:
        return await self.control("stop", message_id)

    async def edit(self, message_id: str, text: str) -> Message:
        """Extension: edit your own message over HTTP; returns it as it now is."""
        body = await self._call(
            "PATCH", f"/api/messages/{_path_id(message_id)}", json={"text": text, "rerun": False}
        )
        return Message.from_dict(_field(body, "message", dict))

    async def delete(self, message_id: str) -> Message:
        """Extension: delete a message (your own; any as a room owner or staff). Returns
        its tombstone (``deleted`` true, no text). Deleting it again is a no-op."""
        body = await self._call("DELETE", f"/api/messages/{_path_id(message_id)}")
        return Message.from_dict(_field(body, "message", dict))

    async def rate(self, message_id: str, value: int, comment: str | None = None) -> Message:
        """Extension: rate a reply up (1) or down (-1), or clear your rating (0)."""
        payload = _drop_none(value=value, comment=comment)
        body = await self._call("PUT", f"/api/messages/{_path_id(message_id)}/rating", json=payload)
        return Message.from_dict(_field(body, "message", dict))

    async def audio(self, message_id: str) -> bytes:
        """The whole reply as a WAV file's bytes (synthesized once by the server)."""
        response = await self._raw("GET", f"/api/messages/{_path_id(message_id)}/audio")
        return response.content

    async def save_audio(self, message_id: str, path: str | Path) -> Path:
        """Write the reply's audio (``GET /api/messages/<id>/audio``) to a WAV file."""
        path = Path(path)
        data = await self.audio(message_id)
        await asyncio.to_thread(path.write_bytes, data)
        return path

    # --- plumbing ------------------------------------------------------------------------

    async def _raw(
        self,
        method: str,
        path: str,
        *,
        room_scope: bool = False,
        request_timeout: float | None = None,
        **kw: Any,
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                path,
                timeout=request_timeout if request_timeout is not None else self.timeout,
                **kw,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(f"cannot reach {self.url} ({network_reason(exc)})") from exc
        except httpx.TimeoutException as exc:
            raise ServerError(f"{self.url} did not answer in time", code="timeout") from exc
        except httpx.TransportError as exc:
            raise ConnectionLost(f"the request to {self.url} failed ({exc!r})") from exc
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "retry_after" not in body:
                retry = response.headers.get("Retry-After", "")
                if retry.isdigit():
                    body["retry_after"] = float(retry)
            raise error_from_body(body, status=response.status_code, room_scope=room_scope)
        return response

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._raw(method, path, **kw)
        try:
            body = response.json()
        except ValueError as exc:
            raise ServerError(
                f"{self.url} answered {path} with something that is not JSON "
                "(is this a Parley server?)",
                status=response.status_code,
            ) from exc
        if not isinstance(body, dict):
            raise ServerError(f"{self.url} answered {path} with unexpected JSON")
        return body


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise ServerError(f"the server's answer has no {name!r}")
    return value


def _path_id(message_id: str) -> str:
    return room_path(str(message_id))


__all__ += ["ParleyError"]

"""The OpenAI-compatible API under /v1/ (docs/protocol.md "OpenAI-compatible API").

Thin: parse the body (``bodies``), resolve the model (``selectors``), call the one send
service every transport calls (``replies.message_send``: the same rate limit, line and
room events as a WebSocket send), and reshape the room's events about the reply
(``stream.ReplyEvents``) into OpenAI's objects (``shapes``).

Closing a stream does not stop the reply: the room's members are watching it. The
explicit stop is ``POST /v1/responses/{id}/cancel``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET, require_POST

from chat import events, replies
from chat.errors import NotFound, ParleyError
from chat.http import query_int, read_json
from chat.models import Message, Role, Status
from chat.openai_api import bodies, selectors, shapes
from chat.openai_api.errors import OpenAIError, error_body, openai_api
from chat.openai_api.stream import Cut, ReplyEvents, is_terminal
from chat.serializers import MessageDict, message_to_dict

DONE = b"data: [DONE]\n\n"
PING_BYTES = b": ping\n\n"


def _model_object(model_id: str, room: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": int(room.created.timestamp()),
        "owned_by": room.owner.get_username(),
    }


@require_GET
@openai_api
async def models(request: HttpRequest, user: User) -> HttpResponseBase:
    found = await database_sync_to_async(selectors.models_for)(user=user)
    return JsonResponse({"object": "list", "data": [_model_object(m, r) for m, r in found]})


@require_GET
@openai_api
async def model_detail(request: HttpRequest, user: User, model_id: str) -> HttpResponseBase:
    model = await database_sync_to_async(selectors.model_resolve)(user=user, model=model_id)
    return JsonResponse(_model_object(model.id, model.room))


def _body(request: HttpRequest) -> dict[str, Any]:
    try:
        return read_json(request)
    except ParleyError as exc:
        raise OpenAIError(exc.detail, code=exc.code) from exc


def _client_id(request: HttpRequest) -> str | None:
    """The SDKs' ``Idempotency-Key`` header, when a client sends one, is the send's
    client_id: a retried request finds the first one's message and reply instead of
    posting the question twice."""
    key = request.headers.get("Idempotency-Key")
    return key if key and len(key) <= replies.CLIENT_ID_MAX and key.isprintable() else None


async def _send(
    request: HttpRequest, user: User, ask: bodies.Ask, *, follow: bool
) -> tuple[selectors.Model, MessageDict, ReplyEvents | None, int, MessageDict | None]:
    """Post the question and ask the model's assistant; the reply, and (``follow``) the
    stream of its events after the returned seq, subscribed before the send so nothing of
    it is missed.

    A request with an ``Idempotency-Key`` may be a retry whose first try already posted
    the question: its reply's ``message`` event, and maybe all of it, came before this
    stream's head. So such a request starts from the reply as it stands at one seq (the
    last value, as a resumed response stream does), and follows it after that seq."""
    model = await database_sync_to_async(selectors.model_resolve)(user=user, model=ask.model)
    stream = ReplyEvents(room=model.room, user=user) if follow else None
    head = await stream.open() if stream is not None else 0
    client_id = _client_id(request)
    prior: MessageDict | None = None
    try:
        _, sent = await replies.message_send(
            user=user,
            room=model.room,
            text=ask.text,
            client_id=client_id,
            assistant=model.handle,
            sampling=ask.sampling,
        )
        if not sent:  # the assistant was removed between the look-up and the send
            raise selectors.model_not_found(ask.model)
        if stream is not None and client_id is not None:
            head, prior = await stream.state_now(sent[0]["id"])
    except BaseException:
        if stream is not None:
            await stream.close()
        raise
    return model, prior or sent[0], stream, head, prior


def _streaming(chunks: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(chunks, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _reply_error(reason: str | None, state: str) -> dict[str, Any]:
    message = reason or f"the reply ended {state}"
    return error_body(f"The reply {state}: {message}", type="server_error", code=f"reply_{state}")


async def _ended(reply: MessageDict) -> dict[str, Any]:
    """The terminal ``generation`` event of a reply read already over, with its usage."""
    state, reason = reply["status"], reply.get("reason")
    return {
        "type": "generation",
        "state": state,
        "reason": reason,
        "usage": await _usage(reply["id"]),
    }


async def _collect(
    stream: ReplyEvents, message_id: str, after: int, prior: MessageDict | None = None
) -> tuple[str, dict[str, Any]]:
    """Follow a reply to its end (from ``prior``, the reply as it stood at ``after``):
    its text and its terminal ``generation`` event."""
    text: list[str] = [prior["text"]] if prior is not None else []
    if prior is not None and is_terminal(prior):
        await stream.close()
        return "".join(text), await _ended(prior)
    try:
        async for event in stream.follow(message_id, after=after):
            if isinstance(event, str):
                continue
            if event["type"] == "delta":
                text.append(event["text"])
            elif event["type"] == "generation" and event["state"] in shapes.TERMINAL:
                return "".join(text), event
            elif event["type"] == "snapshot":
                raise OpenAIError("the reply could not be followed; GET it", status=503)
    except Cut as exc:
        raise OpenAIError(f"the stream was cut: {exc}", status=503) from exc
    finally:
        await stream.close()
    raise OpenAIError("the reply could not be followed; GET it", status=503)


# --- Chat Completions -------------------------------------------------------------------


@require_POST
@openai_api
async def chat_completions(request: HttpRequest, user: User) -> HttpResponseBase:
    ask = bodies.chat_completion(_body(request))
    model, reply, stream, head, prior = await _send(request, user, ask, follow=True)
    assert stream is not None
    if not ask.stream:
        text, end = await _collect(stream, reply["id"], head, prior)
        if end["state"] in (Status.FAILED, Status.INTERRUPTED):
            return JsonResponse(_reply_error(end.get("reason"), end["state"]), status=502)
        reply["status"] = end["state"]
        return JsonResponse(shapes.completion(reply, model.id, text, end.get("usage")))
    chunks = _completion_chunks(stream, reply, model.id, head, ask.include_usage, prior)
    return _streaming(chunks)


def _completion_end(
    reply: MessageDict, model: str, end: dict[str, Any], include_usage: bool
) -> bytes:
    """The chunks that end a completion's stream, from the reply's terminal event."""
    state = end["state"]
    if state in (Status.FAILED, Status.INTERRUPTED):
        return shapes.sse(_reply_error(end.get("reason"), state))
    finish = shapes.finish_reason(state)
    out = shapes.sse(shapes.chunk(reply, model, {}, finish_reason=finish))
    if include_usage:
        out += shapes.sse(shapes.usage_chunk(reply, model, end.get("usage")))
    return out + DONE


async def _completion_chunks(
    stream: ReplyEvents,
    reply: MessageDict,
    model: str,
    head: int,
    include_usage: bool,
    prior: MessageDict | None = None,
) -> AsyncIterator[bytes]:
    """The reply's chunks after seq ``head``; from ``prior`` (the reply as it stood at
    ``head``: a retried request's) its opening and text so far first."""
    try:
        if prior is not None:
            opening = shapes.sse(shapes.chunk(reply, model, {"role": "assistant", "content": ""}))
            if prior["text"]:
                opening += shapes.sse(shapes.chunk(reply, model, {"content": prior["text"]}))
            if is_terminal(prior):
                end = await _ended(prior)
                yield opening + _completion_end(reply, model, end, include_usage)
                return
            yield opening
        async for event in stream.follow(reply["id"], after=head):
            if isinstance(event, str):
                yield PING_BYTES
                continue
            kind = event["type"]
            if kind == "message":
                yield shapes.sse(shapes.chunk(reply, model, {"role": "assistant", "content": ""}))
            elif kind == "delta":
                yield shapes.sse(shapes.chunk(reply, model, {"content": event["text"]}))
            elif kind == "generation" and event["state"] in shapes.TERMINAL:
                yield _completion_end(reply, model, event, include_usage)
                return
            elif kind == "snapshot":
                break
        yield shapes.sse(_reply_error("the stream could not be followed", "cut"))
    except Cut as exc:
        yield shapes.sse(_reply_error(str(exc), "cut"))
    finally:
        await stream.close()


# --- Responses --------------------------------------------------------------------------


def _model_of(message: Message) -> str:
    handle = message.generation.handle if hasattr(message, "generation") else ""
    return f"{selectors.PREFIX}/{message.room.slug}/{handle or 'assistant'}"


@require_POST
@openai_api
async def responses(request: HttpRequest, user: User) -> HttpResponseBase:
    ask = bodies.response_create(_body(request))
    follow = ask.stream or not ask.background
    model, reply, stream, head, prior = await _send(request, user, ask, follow=follow)
    if stream is None:  # background, not streamed: answered at once
        body = shapes.response(
            reply, model=model.id, text="", status=reply["status"], background=True
        )
        return JsonResponse(body)
    if not ask.stream:
        text, end = await _collect(stream, reply["id"], head, prior)
        body = shapes.response(
            reply,
            model=model.id,
            text=text,
            status=end["state"],
            usage=end.get("usage"),
            reason=end.get("reason"),
        )
        return JsonResponse(body)
    if prior is not None:  # a retry: the reply as it stood at ``head``, then its events
        return _streaming(_from_start(stream, prior, model.id, head, background=ask.background))
    mapper = shapes.ResponseEvents(reply, model=model.id, background=ask.background)
    return _streaming(_response_events(stream, mapper, after=head))


async def _final_text(message_id: str) -> str:
    def read() -> str:
        return str(Message.objects.values_list("text", flat=True).get(pk=int(message_id)))

    return await database_sync_to_async(read)()


async def _response_events(
    stream: ReplyEvents,
    mapper: shapes.ResponseEvents,
    *,
    after: int,
    ended_by: int | None = None,
    resumed: bool = False,
) -> AsyncIterator[bytes]:
    """The Responses stream of one reply after seq ``after``. ``resumed``: the client has
    the text up to ``after`` already, so the ``done`` events read the whole text."""
    message_id = mapper.reply["id"]
    try:
        async for event in stream.follow(message_id, after=after, ended_by=ended_by):
            if isinstance(event, str):
                yield PING_BYTES
                continue
            kind, seq = event["type"], event["seq"]
            if kind == "message":
                yield mapper.opening(seq, status=event["message"]["status"])
            elif kind == "delta":
                yield mapper.delta(seq, event["text"])
            elif kind == "generation":
                final = None
                if resumed and event["state"] in shapes.TERMINAL:
                    final = await _final_text(message_id)
                yield mapper.state(seq, event, final_text=final)
            elif kind == "snapshot":
                yield shapes.sse(
                    error_body(
                        "the room no longer holds this stream's events after starting_after: "
                        "GET the response for its text, or stream it without starting_after",
                        type="invalid_request_error",
                        param="starting_after",
                        code="resume_too_old",
                    ),
                    event="error",
                )
                return
    except Cut as exc:
        yield shapes.sse(
            error_body(
                f"the stream was cut ({exc}): resume it with starting_after",
                type="server_error",
                code="stream_cut",
            ),
            event="error",
        )
    finally:
        await stream.close()


@require_GET
@openai_api
async def response_detail(request: HttpRequest, user: User, response_id: str) -> HttpResponseBase:
    message = await database_sync_to_async(selectors.reply_get)(user=user, response_id=response_id)
    model = _model_of(message)
    background = True
    if request.GET.get("stream") not in ("true", "1"):
        _, now = await events.room_message_at(room_id=message.room_id, message_id=str(message.pk))
        reply = now or message_to_dict(message)
        usage = {
            "prompt_tokens": message.generation.prompt_tokens,
            "completion_tokens": message.generation.completion_tokens,
        }
        body = shapes.response(
            reply,
            model=model,
            text=reply["text"],
            status=reply["status"],
            usage=usage,
            background=background,
            reason=reply.get("reason"),
        )
        return JsonResponse(body)
    try:
        starting_after = query_int(request, "starting_after", minimum=0)
    except ParleyError as exc:
        raise OpenAIError(exc.detail, param="starting_after") from exc
    stream = ReplyEvents(room=message.room, user=user)
    await stream.open()
    try:
        seq, now = await stream.state_now(str(message.pk))
    except BaseException:
        await stream.close()
        raise
    reply = now or message_to_dict(message)
    if starting_after is not None and starting_after >= seq and is_terminal(now):
        await stream.close()
        return _streaming(_nothing())  # it had ended by then: nothing follows
    if starting_after is not None and starting_after > seq:
        await stream.close()
        raise OpenAIError(
            f"starting_after is past the room's latest event ({seq})", param="starting_after"
        )
    if starting_after is not None:
        mapper = shapes.ResponseEvents(reply, model=model, background=background)
        ended_by = seq if is_terminal(now) else None
        return _streaming(
            _response_events(stream, mapper, after=starting_after, ended_by=ended_by, resumed=True)
        )
    # From the start: the reply as it stood at ``seq`` (one piece, at that seq), then
    # its events after it.
    return _streaming(_from_start(stream, reply, model, seq))


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


async def _from_start(
    stream: ReplyEvents, reply: MessageDict, model: str, seq: int, *, background: bool = True
) -> AsyncIterator[bytes]:
    text, status = reply["text"], reply["status"]
    opening = reply.copy()
    opening["text"] = ""
    opening["status"] = Status.QUEUED if status == Status.QUEUED else Status.STREAMING
    mapper = shapes.ResponseEvents(opening, model=model, background=background)
    head = mapper.opening(seq)
    if text:
        head += mapper.delta(seq, text)
    if status in shapes.TERMINAL:
        await stream.close()
        yield head + mapper.state(seq, await _ended(reply))
        return
    yield head
    async for chunk in _response_events(stream, mapper, after=seq):
        yield chunk


async def _usage(message_id: str) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        prompt, completion = (
            Message.objects.filter(pk=int(message_id))
            .values_list("generation__prompt_tokens", "generation__completion_tokens")
            .get()
        )
        return {"prompt_tokens": prompt, "completion_tokens": completion}

    return await database_sync_to_async(read)()


@require_POST
@openai_api
async def response_control(
    request: HttpRequest, user: User, response_id: str, action: str
) -> HttpResponseBase:
    """cancel = the contract's ``stop``; pause and resume are Parley's extension. The
    control's own check (``reply_control``: who may control a reply) is the only read
    before the reply is told, so a cancel closes the upstream as soon as a stop does."""
    message_id = selectors.response_message_id(response_id)
    verb = "stop" if action == "cancel" else action
    try:
        result = await replies.reply_control(user=user, message_id=message_id, action=verb)
    except NotFound as exc:
        raise selectors.response_not_found(response_id) from exc
    if result["role"] != Role.ASSISTANT:
        raise selectors.response_not_found(response_id)
    usage = None
    if result["status"] in shapes.TERMINAL:
        usage = await _usage(result["id"])
    handle = result.get("assistant", {}).get("handle") or "assistant"
    body = shapes.response(
        result,
        model=f"{selectors.PREFIX}/{result['room']}/{handle}",
        text=result["text"],
        status=result["status"],
        usage=usage,
        background=True,
        reason=result.get("reason"),
    )
    return JsonResponse(body)

"""Putting replies in their room's line, and the assistants a reply asks in turn.

Both a member's send (chat/replies/__init__.py) and a completed reply that mentions other
assistants (``ask_mentioned``, called by the manager's room worker) queue replies the same
way: each gets its run, on its assistant's provider and model, joins the room's line and
is announced with its ``message`` event, in order. A sibling of the manager rather than a
part of it, so the package's send and the manager both use it without an import cycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from channels.db import database_sync_to_async

from chat.assistants.providers import backend_for
from chat.events import StoreUnavailable, message_body, room_event_emit
from chat.llm.base import ChatMessage
from chat.models import Status
from chat.replies import db
from chat.replies.run import ReplyRun, RunOwner
from chat.serializers import MessageDict, message_to_dict
from core import tracing

if TYPE_CHECKING:
    from chat.replies.places import PlaceAnnouncer

logger = logging.getLogger(__name__)


class Owner(RunOwner, Protocol):
    """What queuing a reply needs of the manager (chat/replies/manager.py)."""

    worker_id: str
    places: PlaceAnnouncer

    def queue_length(self, room_id: int) -> int: ...

    async def register(self, run: ReplyRun) -> None: ...

    def start(self, run: ReplyRun) -> None: ...


async def queue_replies(
    manager: Owner,
    *,
    room_id: int,
    room_slug: str,
    queued: list[db.Queued],
    asker_id: int,
    voice: str,
    prompt: list[ChatMessage] | None = None,
    then: Mapping[str, Any] | None = None,
    seqs: dict[int, int] | None = None,
    sent_ns: int | None = None,
) -> list[MessageDict]:
    """Run and announce ``queued`` (stored as queued, in the order they answer); their wire
    dicts. ``prompt``: the first one's, read with the send, used only if nothing waits
    before it. If an announcement cannot be stored, that reply and the ones after it are
    dropped (nobody saw them) and ``StoreUnavailable`` is raised; a resend with the same
    client_id queues them (db.create_messages). ``sent_ns``: when the send that asks them
    was accepted (``time.time_ns()``; default now), where each one's trace begins.

    ``then``: a durable event body announced right after the (single) reply's ``message``
    event, before anything of its run (a new version's ``version`` event): members learn
    which version is current as soon as it exists, and the run starts after it. If it
    cannot be stored, the version stands (it was announced) and a reload shows it
    current.

    ``seqs``: messages already emitted (the asker's) whose seq is kept with the replies'
    (db.record_seqs), in one thread hop after the announcements, whatever happens to them."""
    seqs = dict(seqs or {})
    if sent_ns is None:
        sent_ns = time.time_ns()
    try:
        return await _announce(
            manager, room_id, room_slug, queued, asker_id, voice, prompt, then, seqs, sent_ns
        )
    finally:
        if seqs:
            await database_sync_to_async(db.record_seqs)(seqs)


async def _announce(
    manager: Owner,
    room_id: int,
    room_slug: str,
    queued: list[db.Queued],
    asker_id: int,
    voice: str,
    prompt: list[ChatMessage] | None,
    then: Mapping[str, Any] | None,
    seqs: dict[int, int],
    sent_ns: int,
) -> list[MessageDict]:
    dicts: list[MessageDict] = []
    for index, item in enumerate(queued):
        reply_dict = message_to_dict(item.reply, room_slug=room_slug)
        speaker = item.speaker
        run = ReplyRun(
            manager=manager,
            message_id=item.reply.pk,
            room_id=room_id,
            asker_id=asker_id,
            voice=voice,
            backend=backend_for(speaker.config),
            options=speaker.options,
            handle=speaker.handle,
            voice_name=speaker.voice,
            # Only if still nothing is queued before it (another send may have been
            # queued while this one was stored).
            prompt=prompt if index == 0 and manager.queue_length(room_id) == 0 else None,
        )
        if tracing.enabled():  # off: this one check per turn (core/tracing.py)
            run.trace = tracing.turn_begin(
                sent_ns=sent_ns,
                room_id=room_id,
                message_id=run.message_id,
                assistant=run.handle,
                model=run.model_name,
            )
        await manager.register(run)
        if then is None:
            # Started before its announcement: the run opens the model request at once,
            # while the reply's `message` event is stored and published, and sends nothing
            # to members until `announced` (the reply's `message` event precedes
            # everything about it).
            manager.start(run)
        try:
            event = await room_event_emit(room_id=room_id, body=message_body(reply_dict))
            seqs[item.reply.pk] = event["seq"]
        except StoreUnavailable:
            run.trace_end("discarded")  # nobody saw it
            manager.unregister(run)
            await manager.dequeue(run)
            await database_sync_to_async(db.discard)([q.reply.pk for q in queued[index:]])
            run.announced.set()
            raise
        try:
            if then is not None:
                await room_event_emit(room_id=room_id, body=then)
        except StoreUnavailable:
            logger.warning("reply %s: its announcement could not be recorded", item.reply.pk)
        finally:
            run.announced.set()
            if then is not None:
                # A new version starts once both its events are out: its prompt, read
                # meanwhile in the database thread, would hold the GIL against their
                # fan-out, and members see which version is current that much later (at
                # 200 members the `version` event came ~10 ms after the `message`).
                manager.start(run)
        dicts.append(reply_dict)
    if queued:
        manager.places.touch(room_id)  # where they stand in line
    return dicts


async def ask_mentioned(manager: Owner, run: ReplyRun) -> None:
    """A reply has ended: if it completed and its text mentions other assistants of the
    room, ask them too (db.create_followups bounds how many). A stopped or failed reply
    asks nobody."""
    if run.status != Status.COMPLETE:
        return
    text = run.visible()[0]
    if "@" not in text:
        return
    try:
        slug, queued = await database_sync_to_async(db.create_followups)(
            reply_id=run.message_id,
            text=text,
            handle=run.handle,
            queued=manager.queue_length(run.room_id),
            worker=manager.worker_id,
        )
        if not queued:
            return
        await queue_replies(
            manager,
            room_id=run.room_id,
            room_slug=slug,
            queued=queued,
            asker_id=run.asker_id,
            voice=run.voice,
        )
    except StoreUnavailable as exc:
        logger.warning(
            "reply %s: could not ask the assistants it mentions: %s", run.message_id, exc
        )
    except Exception:  # noqa: BLE001 - the room's line must move on regardless
        logger.exception("reply %s: asking the assistants it mentions failed", run.message_id)

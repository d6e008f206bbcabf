"""The durable event constructors (chat/events/schema.py) and the cap on a delta's size."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from chat.events import (
    delete_body,
    delta_body,
    edit_body,
    generation_body,
    message_body,
    rating_body,
    version_body,
)
from chat.events.schema import snapshot_event
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, stored
from tests.support.wsclient import RoomClient


def test_each_constructor_makes_the_contract_shape():
    message = {"id": "7", "role": "assistant", "text": ""}
    assert message_body(message) == {"type": "message", "message": message}  # type: ignore[arg-type]
    assert delta_body(message_id="7", text="Hi") == {
        "type": "delta",
        "message_id": "7",
        "text": "Hi",
    }
    assert generation_body(message_id="7", state="paused", by="ann") == {
        "type": "generation",
        "message_id": "7",
        "state": "paused",
        "by": "ann",
        "reason": None,
    }
    end = generation_body(
        message_id="7", state="complete", usage={"prompt_tokens": 3}, metrics={"tokens": 2}
    )
    assert (end["usage"], end["metrics"]) == ({"prompt_tokens": 3}, {"tokens": 2})
    assert snapshot_event(seq=9, messages=[]) == {"type": "snapshot", "seq": 9, "messages": []}


def test_the_version_event_has_the_agreed_shape():
    # docs/protocol.md "Versions of a reply": the reply, the version shown, the count, who.
    assert version_body(message_id="7", current="12", versions=2, by="ann") == {
        "type": "version",
        "message_id": "7",
        "current": "12",
        "versions": 2,
        "by": "ann",
    }
    with pytest.raises(ValueError, match="at least one"):
        version_body(message_id="7", current="7", versions=0, by=None)


def test_the_lifecycle_events_have_the_agreed_shapes():
    """docs/protocol.md "Editing, deleting and rating messages" (the names and fields
    agreed before the work began)."""
    assert edit_body(message_id="7", text="fixed", by="ann") == {
        "type": "edit",
        "message_id": "7",
        "text": "fixed",
        "edited": True,
        "by": "ann",
    }
    assert delete_body(message_id="7", by="bob") == {
        "type": "delete",
        "message_id": "7",
        "by": "bob",
    }
    assert rating_body(message_id="8", up=2, down=1) == {
        "type": "rating",
        "message_id": "8",
        "up": 2,
        "down": 1,
    }
    with pytest.raises(ValueError, match="negative"):
        rating_body(message_id="8", up=-1, down=0)


def test_a_generation_state_outside_the_contract_is_refused():
    with pytest.raises(ValueError, match="queued"):
        generation_body(message_id="7", state="queued")


@pytest.mark.django_db(transaction=True)
async def test_no_delta_carries_more_than_the_cap(daphne_factory, llm, make_user, make_room):
    server = daphne_factory(PARLEY_DELTA_MAX_CHARS="1000")
    owner, token = await sync_to_async(make_user)("cap")
    room = await sync_to_async(make_room)(owner, "Caps")
    pieces = ["y" * 499 + " " for _ in range(30)]  # 15,000 characters, all at once
    llm.set_default(Scenario.normal(pieces))
    c = await RoomClient.connect(server.ws_url, room.slug, token=token)
    await c.wait_type("hello")
    reply_id = await ask(c, ask_ai=True)
    await c.wait_terminal(reply_id)
    deltas = [e["text"] for e in c.events if e["type"] == "delta"]
    assert max(len(d) for d in deltas) <= 1000
    saved = await stored(reply_id)
    assert "".join(deltas) == "".join(pieces) == saved.text
    await c.close()

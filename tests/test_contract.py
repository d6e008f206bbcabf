"""The contract's names agree wherever they are written down.

The server's close codes live in core/contract.py. parley_client and the page keep their
own copies (they must not import the server), and docs/protocol.md lists them: a client
that retried a code the server means as final (or gave up on one it should retry) would
loop or strand its user, so the four must say the same.
"""

from __future__ import annotations

import re
from pathlib import Path

from core import contract
from parley_client import errors as client_errors

ROOT = Path(__file__).resolve().parent.parent
FINAL = {code for code, close in contract.CLOSE_CODES.items() if not close.reconnect}


def test_parley_client_knows_every_close_code_and_gives_up_on_the_final_ones():
    assert set(client_errors._BY_CLOSE) <= set(contract.CLOSE_CODES)
    assert set(client_errors.FATAL_CLOSE_CODES) == FINAL
    # Every code the server may send maps to a typed error or is retried as a drop.
    for code in contract.CLOSE_CODES:
        error = client_errors.error_from_close(code)
        assert error.close_code == code


def test_the_page_gives_up_on_exactly_the_final_close_codes():
    source = (ROOT / "chat/static/chat/js/connection.js").read_text()
    block = re.search(r"const FATAL_CLOSES = \{(.*?)\};", source, re.S)
    assert block is not None
    assert {int(code) for code in re.findall(r"^\s*(\d{4}):", block.group(1), re.M)} == FINAL
    # The one code the page comes straight back after.
    assert f"e.code === {contract.TOO_SLOW.code} ? 0" in source


def test_the_protocol_doc_lists_every_close_code_with_its_reconnect_rule():
    doc = (ROOT / "docs/protocol.md").read_text()
    section = doc.split("### Close codes", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\d{4})` \|[^|]*\| (yes|no)\b", section, re.M)
    assert {int(code): answer == "yes" for code, answer in rows} == {
        code: close.reconnect for code, close in contract.CLOSE_CODES.items()
    }


def test_no_comment_cites_numbered_sections_of_a_file_outside_the_repository():
    stale = []
    for path in [
        *ROOT.glob("chat/**/*.py"),
        *ROOT.glob("voice/**/*.py"),
        *ROOT.glob("core/*.py"),
        *ROOT.glob("accounts/**/*.py"),
        *ROOT.glob("config/*.py"),
        *ROOT.glob("parley_client/*.py"),
        *ROOT.glob("chat/static/**/*.js"),
    ]:
        # Our own files: the vendored libraries are third-party code (and one of their
        # folders is named highlight.js).
        if not path.is_file() or "vendor" in path.relative_to(ROOT).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"PROTOCOL\.md,? (section|§)\s*\d", line):
                stale.append(f"{path.relative_to(ROOT)}:{number}")
    assert stale == []


def test_every_live_event_type_is_typed_by_parley_client_and_handled_by_the_page():
    from chat.events.schema import queue_event
    from parley_client.models import QueuePlaces, UnknownEvent, parse_event

    live_types = {v for k, v in vars(contract).items() if k.startswith("LIVE_")}
    # One frame of each, as the server builds it where it has a constructor.
    samples = {
        contract.LIVE_PRESENCE: {"type": "presence", "online": ["ann"]},
        contract.LIVE_TYPING: {"type": "typing", "username": "ann"},
        contract.LIVE_AUDIO: {"type": "audio", "state": "end", "stream": 7, "chunks": 2},
        contract.LIVE_QUEUE: dict(
            queue_event([{"message_id": "18", "position": 2, "model_position": None}])
        ),
    }
    assert set(samples) == live_types, "a new live event type needs a sample here"
    page = (ROOT / "chat/static/chat/js/room.js").read_text()
    for kind, frame in samples.items():
        assert not isinstance(parse_event(frame), UnknownEvent), kind
        assert f'case "{kind}":' in page, f"room.js does not handle {kind!r}"
    places = parse_event(samples[contract.LIVE_QUEUE])
    assert isinstance(places, QueuePlaces)
    assert [(p.message_id, p.position, p.model_position) for p in places.replies] == [
        ("18", 2, None)
    ]


def test_every_durable_event_type_is_typed_by_parley_client_and_heard_by_the_page():
    """Each durable event the server can send (chat/events/schema.py's bodies) is parsed
    by parley_client into its own type, applied by the page's store, and listened for by
    the page's EventSource (which hears only the names it asks for)."""
    from typing import get_args, get_type_hints

    from chat.events import schema
    from chat.events.schema import delete_body, edit_body, rating_body
    from parley_client.models import UnknownEvent, parse_event

    durable = {
        get_args(get_type_hints(event)["type"])[0] for event in get_args(schema.DurableEvent)
    }
    assert {"edit", "delete", "rating"} <= durable
    samples = {
        "edit": dict(edit_body(message_id="7", text="fixed", by="ann")),
        "delete": dict(delete_body(message_id="7", by="ann")),
        "rating": dict(rating_body(message_id="8", up=1, down=0)),
    }
    connection = (ROOT / "chat/static/chat/js/connection.js").read_text()
    listened = re.search(r"SSE_EVENT_TYPES = \[(.*?)\];", connection, re.S)
    assert listened is not None
    store = (ROOT / "chat/static/chat/js/store.js").read_text()
    for kind in durable:
        assert f'"{kind}"' in listened.group(1), f"the page's EventSource misses {kind!r}"
        assert f'case "{kind}":' in store, f"store.js does not apply {kind!r}"
    for kind, frame in samples.items():
        assert not isinstance(parse_event({**frame, "seq": 3}), UnknownEvent), kind

"""The admin's "Stop reply" action stops a running reply through ``reply_control``.

A real daphne runs the reply; a staff member signs in to its admin with a browser's
session and CSRF cookie, selects the reply and runs the action. Members see the same
``generation stopped`` an asker's stop gives, and the reply is not left unstoppable.
"""

from __future__ import annotations

import re

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Status
from tests.support.openai_server import Scenario
from tests.support.rooms import ask, stored
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)


def make_superuser(make_user, username: str) -> None:
    user, _ = make_user(username, staff=True)
    user.is_superuser = True
    user.save(update_fields=["is_superuser"])


def admin_session(daphne, username: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=daphne.http_url, timeout=30, follow_redirects=False)


async def sign_in(http: httpx.AsyncClient, username: str) -> None:
    page = await http.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    r = await http.post(
        "/admin/login/?next=/admin/",
        data={
            "username": username,
            "password": "pw-for-tests-123",
            "csrfmiddlewaretoken": token.group(1),
            "next": "/admin/",
        },
    )
    assert r.status_code == 302, r.text[:500]


async def test_the_stop_reply_action_stops_a_running_reply(daphne, llm, make_user, make_room):
    ann, ann_token = await sync_to_async(make_user)("ann")
    await sync_to_async(make_superuser)(make_user, "boss")
    room = await sync_to_async(make_room)(ann, "Admin stop", visibility="private")
    llm.set_default(Scenario.endless(("t ",), interval=0.01))

    ws = await RoomClient.connect(daphne.ws_url, room.slug, token=ann_token)
    await ws.wait_type("hello")
    reply_id = await ask(ws, "go on forever")
    await ws.wait_type("delta", message_id=reply_id)

    async with admin_session(daphne, "boss") as http:
        await sign_in(http, "boss")
        listing = await http.get("/admin/chat/message/")
        assert "Stop reply" in listing.text
        r = await http.post(
            "/admin/chat/message/",
            data={
                "action": "stop_reply",
                "_selected_action": [reply_id],
                "csrfmiddlewaretoken": http.cookies["csrftoken"],
            },
            headers={"Referer": f"{daphne.http_url}/admin/chat/message/"},
        )
        assert r.status_code == 302, r.text[:1000]
        done = await http.get(r.headers["Location"])
        assert "Stopped 1 reply" in done.text

    end = await ws.wait_terminal(reply_id)
    assert (end["state"], end["by"]) == ("stopped", "boss")
    saved = await stored(reply_id)
    assert saved.status == Status.STOPPED
    assert saved.text == ws.text_of(reply_id)
    # No delta after the terminal event.
    index = ws.events.index(end)
    assert [e for e in ws.events[index:] if e.get("type") == "delta"] == []
    await ws.close()

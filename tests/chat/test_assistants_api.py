"""The assistants, models, room settings, members and invite APIs (issue 18), over a real
daphne with two loopback model servers that list their models and one that is down.

Every answer of every request here is searched for the providers' keys (the client's
response hook), and the server's log at the end: a key never leaves the server.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chat.models import Assistant, Invite, Membership, Room, RoomAssistant
from tests.conftest import daphne_env
from tests.support import web
from tests.support.daphne import DaphneServer, free_port
from tests.support.openai_server import FakeOpenAIServer
from tests.support.sse import open_sse
from tests.support.wsclient import RoomClient

pytestmark = pytest.mark.django_db(transaction=True)

KEYS = ("sk-ALPHA-7f3c-never-shown", "sk-BETA-91aa-never-shown", "sk-DOWN-0bad-never-shown")


@pytest.fixture(scope="module")
def model_servers() -> Iterator[tuple[FakeOpenAIServer, FakeOpenAIServer]]:
    alpha = FakeOpenAIServer(model="alpha-large", api_key=KEYS[0]).start()
    beta = FakeOpenAIServer(model="beta-small", api_key=KEYS[1]).start()
    yield alpha, beta
    alpha.stop()
    beta.stop()


@pytest.fixture(scope="module")
def server(
    django_db_setup: Any,
    django_db_blocker: Any,
    fake_llm_server: FakeOpenAIServer,
    model_servers: tuple[FakeOpenAIServer, FakeOpenAIServer],
) -> Iterator[DaphneServer]:
    """A daphne with providers alpha and beta (loopback servers) and down (nothing
    listens there)."""
    alpha, beta = model_servers
    providers = {
        "alpha": {"base_url": alpha.base_url, "api_key": KEYS[0]},
        "beta": {"base_url": beta.base_url, "api_key": KEYS[1]},
        "down": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": KEYS[2]},
    }
    with django_db_blocker.unblock():
        env = daphne_env(
            fake_llm_server,
            PARLEY_PROVIDERS=json.dumps(providers),
            VOICE_PRELOAD="0",
            STT_PRELOAD="0",
        )
    daphne = DaphneServer(env).start()
    yield daphne
    daphne.stop()
    log = "\n".join(daphne.lines)
    for key in KEYS:
        assert key not in log


def _no_key(response: httpx.Response) -> None:
    body = response.read().decode("utf-8", "replace")
    for key in KEYS:
        assert key not in body, (response.request.url, body[:300])
        assert key not in str(response.headers)


async def _no_key_async(response: httpx.Response) -> None:
    if "text/event-stream" in response.headers.get("content-type", ""):
        return  # a stream: its events are checked as they are read
    await response.aread()
    _no_key(response)


def api(server: DaphneServer, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=server.http_url,
        headers=headers,
        timeout=15,
        event_hooks={"response": [_no_key]},
    )


def logged_in(server: DaphneServer, username: str) -> httpx.Client:
    """A signed-in browser-like client whose every answer is searched for the keys."""
    return web.logged_in(server, username, event_hooks={"response": [_no_key]})


@pytest.fixture
def team(make_user, make_room) -> dict[str, Any]:
    """ann owns the private room "Team"; bob is a member; cat is not; sam is staff."""
    ann, ann_token = make_user("ann")
    bob, bob_token = make_user("bob")
    _, cat_token = make_user("cat")
    _, sam_token = make_user("sam", staff=True)
    room = make_room(ann, "Team", visibility="private", assistant="mention")
    Membership.objects.create(room=room, user=bob)
    return {
        "room": room,
        "ann": ann_token,
        "bob": bob_token,
        "cat": cat_token,
        "sam": sam_token,
        "base": f"/api/rooms/{room.slug}",
    }


def stored_state(room: Room) -> tuple[Any, ...]:
    """Everything an assistants write could change, to show that a refused one did not."""
    room.refresh_from_db()
    return (
        list(Assistant.objects.order_by("pk").values()),
        list(RoomAssistant.objects.order_by("pk").values()),
        list(Membership.objects.order_by("pk").values("user_id", "role")),
        (room.name, room.visibility, room.voice, room.assistant, room.system_prompt),
    )


# --- Models -------------------------------------------------------------------------------


def test_models_lists_every_provider_and_names_the_one_that_is_down(server, team):
    with api(server, team["bob"]) as c:
        r = c.get("/api/models")
        assert r.status_code == 200, r.text
        body = r.json()
        assert {"id": "alpha/alpha-large", "provider": "alpha", "model": "alpha-large"} in body[
            "models"
        ]
        assert {"id": "beta/beta-small", "provider": "beta", "model": "beta-small"} in body[
            "models"
        ]
        assert {"id": "default/fake-model", "provider": "default", "model": "fake-model"} in (
            body["models"]
        )
        [down] = body["errors"]
        assert down["provider"] == "down"
        assert "127.0.0.1" in down["error"]  # where, for the operator; never the key
    with api(server) as anonymous:
        assert anonymous.get("/api/models").status_code == 401


# --- Assistants ---------------------------------------------------------------------------


def test_owner_creates_lists_changes_and_removes_a_room_assistant(server, team):
    base = team["base"]
    with api(server, team["ann"]) as ann, api(server, team["bob"]) as bob:
        r = ann.post(
            f"{base}/assistants",
            json={
                "handle": "coder",
                "name": "Code reviewer",
                "avatar": "🤖",
                "model": "alpha/alpha-large",
                "system_prompt": "Review code.",
                "temperature": 0.2,
                "max_tokens": 400,
                "voice": "amy",
                "mode": "mention",
            },
        )
        assert r.status_code == 201, r.text
        assert r.json() == {
            "handle": "coder",
            "name": "Code reviewer",
            "avatar": "🤖",
            "model": "alpha/alpha-large",
            "mode": "mention",
            "shared": False,
            "system_prompt": "Review code.",
            "temperature": 0.2,
            "max_tokens": 400,
            "voice": "amy",
        }
        # Members read them, with their settings; the room object lists them too.
        listed = bob.get(f"{base}/assistants").json()["assistants"]
        assert [a["handle"] for a in listed] == ["assistant", "coder"]
        room = bob.get(base).json()
        assert [a["handle"] for a in room["assistants"]] == ["assistant", "coder"]

        r = ann.patch(
            f"{base}/assistants/coder",
            json={"name": "Reviewer", "model": "beta/beta-small", "temperature": None},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["model"], r.json()["temperature"]) == (
            "Reviewer",
            "beta/beta-small",
            None,
        )
        r = ann.patch(f"{base}/assistants/coder", json={"handle": "other"})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        assert "cannot change" in r.json()["detail"]
        assert ann.patch(f"{base}/assistants/coder", json={"handle": "coder"}).status_code == 200

        assert ann.delete(f"{base}/assistants/coder").status_code == 204
        assert not Assistant.objects.filter(handle="coder").exists()
        assert ann.delete(f"{base}/assistants/coder").status_code == 404


def test_bad_assistant_bodies_are_refused_and_store_nothing(server, team, make_user):
    room, base = team["room"], team["base"]
    taken, _ = make_user("taken")
    Membership.objects.create(room=room, user=taken)
    good = {"handle": "coder", "name": "Coder", "model": "alpha/alpha-large"}
    with api(server, team["ann"]) as ann:
        ann.patch(f"{base}/assistants/assistant", json={"mode": "always"}).raise_for_status()
        before = stored_state(room)
        cases: list[tuple[dict[str, Any], str]] = [
            ({**good, "handle": "Coder"}, "^[a-z]"),
            ({**good, "handle": "9lives"}, "lowercase letter"),
            ({**good, "handle": "x" * 33}, "32"),
            ({**good, "handle": "a b"}, "lowercase letter"),
            ({**good, "handle": None}, "handle must be a string"),
            ({**good, "handle": "assistant"}, "reserved"),
            ({**good, "handle": "taken"}, "member of this room"),
            ({**good, "handle": "ann"}, "member of this room"),
            ({**good, "model": "alpha/no-such-model"}, "does not list"),
            ({**good, "model": "nobody/some-model"}, "no provider named 'nobody'"),
            ({**good, "model": "down/anything"}, "did not list its models"),
            ({**good, "model": "no-slash"}, "<provider>/<model id>"),
            ({**good, "temperature": 2.5}, "temperature"),
            ({**good, "temperature": -0.1}, "temperature"),
            ({**good, "temperature": "hot"}, "temperature"),
            ({**good, "temperature": True}, "temperature"),
            ({**good, "max_tokens": 0}, "max_tokens"),
            ({**good, "max_tokens": 40000}, "max_tokens"),
            ({**good, "max_tokens": 1.5}, "max_tokens"),
            ({**good, "mode": "sometimes"}, "mode"),
            ({**good, "mode": "always"}, "@assistant answers every message"),
            ({**good, "avatar": "x" * 17}, "avatar"),
            ({**good, "name": ""}, "name"),
            ({**good, "name": "a\x00b"}, "NUL"),
            ({**good, "system_prompt": "\ud800"}, "surrogate"),
            ({**good, "colour": "red"}, "unknown field"),
            ({"shared": "nobody"}, "no shared assistant"),
            ({"shared": "Bad Handle"}, "shared"),
        ]
        for body, words in cases:
            # json.dumps escapes a lone surrogate as \ud800, as a hostile client would.
            r = ann.post(
                f"{base}/assistants",
                content=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            assert (r.status_code, r.json()["code"]) == (400, "bad_request"), (body, r.text)
            if words != "^[a-z]":
                assert words in r.json()["detail"], (body, r.json()["detail"])
        r = ann.patch(f"{base}/assistants/nobody", json={"name": "X"})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = ann.patch(f"{base}/assistants/assistant", json={"temperature": 3})
        assert r.status_code == 400
        # down's reason says where it is, never its key (the hook checks every answer).
        r = ann.post(f"{base}/assistants", json={**good, "model": "down/x"})
        assert "127.0.0.1" in r.json()["detail"]
        assert stored_state(room) == before


def test_only_owners_and_staff_write_and_non_members_see_nothing(server, team, make_user):
    room, base = team["room"], team["base"]
    body = {"handle": "coder", "name": "Coder", "model": "default/fake-model"}
    with api(server, team["bob"]) as bob, api(server, team["cat"]) as cat:
        before = stored_state(room)
        assert bob.post(f"{base}/assistants", json=body).status_code == 403
        assert bob.patch(f"{base}/assistants/assistant", json={"name": "X"}).status_code == 403
        assert bob.delete(f"{base}/assistants/assistant").status_code == 403
        assert bob.patch(base, json={"name": "Mine"}).status_code == 403
        assert bob.post(f"{base}/invites").status_code == 403
        assert bob.get(f"{base}/invites").status_code == 403
        assert bob.patch(f"{base}/members/ann", json={"role": "member"}).status_code == 403
        for method, path in [
            ("GET", f"{base}/assistants"),
            ("POST", f"{base}/assistants"),
            ("PATCH", f"{base}/assistants/assistant"),
            ("DELETE", f"{base}/assistants/assistant"),
            ("PATCH", base),
            ("GET", f"{base}/members"),
            ("POST", f"{base}/invites"),
        ]:
            r = cat.request(method, path, json=body if method != "GET" else None)
            assert (r.status_code, r.json()["code"]) == (404, "not_found"), (method, path)
        assert stored_state(room) == before
    with api(server, team["sam"]) as sam:  # staff, not a member
        assert sam.post(f"{base}/assistants", json=body).status_code == 404  # private: unseen
    room.visibility = "public"
    room.save()
    with api(server, team["sam"]) as sam, api(server, team["cat"]) as cat:
        assert cat.post(f"{base}/assistants", json=body).status_code == 403
        assert cat.get(f"{base}/assistants").status_code == 403  # members only
        r = sam.post(f"{base}/assistants", json=body)
        assert r.status_code == 201, r.text


def test_shared_assistants_are_listed_added_and_stay_when_removed(server, team, make_user):
    base = team["base"]
    Assistant.objects.create(room=None, handle="translator", name="Translator", provider="beta")
    Assistant.objects.create(room=None, handle="bob", name="Clash", provider="beta")
    with api(server, team["ann"]) as ann:
        shared = ann.get("/api/assistants/shared").json()["assistants"]
        assert {
            "handle": "translator",
            "name": "Translator",
            "avatar": "",
            "model": ("beta/fake-model"),
        } in shared
        r = ann.post(f"{base}/assistants", json={"shared": "translator", "mode": "mention"})
        assert r.status_code == 201, r.text
        assert r.json()["shared"] is True
        again = ann.post(f"{base}/assistants", json={"shared": "translator"})
        assert (again.status_code, again.json()["code"]) == (400, "bad_request")
        clash = ann.post(f"{base}/assistants", json={"shared": "bob"})
        assert "member of this room" in clash.json()["detail"]
        # Its settings are staff's; its mode is the room's.
        r = ann.patch(f"{base}/assistants/translator", json={"name": "Mine"})
        assert r.status_code == 400
        r = ann.patch(f"{base}/assistants/translator", json={"mode": "always"})
        assert (r.status_code, r.json()["mode"]) == (200, "always")
        assert ann.delete(f"{base}/assistants/translator").status_code == 204
    assert Assistant.objects.filter(handle="translator", room=None).exists()
    assert not RoomAssistant.objects.filter(handle="translator").exists()


def test_one_always_at_a_time(server, team):
    base = team["base"]
    with api(server, team["ann"]) as ann:
        r = ann.post(
            f"{base}/assistants",
            json={
                "handle": "coder",
                "name": "Coder",
                "model": "default/fake-model",
                "mode": "always",
            },
        )
        assert r.status_code == 201, r.text
        r = ann.patch(f"{base}/assistants/assistant", json={"mode": "always"})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        assert "@coder answers every message" in r.json()["detail"]
        r = ann.patch(base, json={"assistant": "always"})
        assert "@coder answers every message" in r.json()["detail"]
        # Switching is two steps.
        assert ann.patch(f"{base}/assistants/coder", json={"mode": "mention"}).status_code == 200
        r = ann.patch(base, json={"assistant": "always"})
        assert r.status_code == 200, r.text
        assert r.json()["assistant"] == "always"


# --- Room settings, members, roles ----------------------------------------------------------


def test_room_settings_patch_and_the_legacy_fields(server, team):
    room, base = team["room"], team["base"]
    with api(server, team["ann"]) as ann:
        r = ann.patch(
            base,
            json={
                "name": "Team two",
                "visibility": "public",
                "voice": "streaming",
                "prompt_heard_text": False,
                "assistant": "always",
                "system_prompt": "Be brief.",
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["name"], body["visibility"], body["voice"], body["prompt_heard_text"]) == (
            "Team two",
            "public",
            "streaming",
            False,
        )
        assert body["assistant"] == "always"
        assert body["slug"] == room.slug
        room.refresh_from_db()
        # The old columns too, for a process of the release before.
        assert (room.assistant, room.system_prompt) == ("always", "Be brief.")
        a = RoomAssistant.objects.select_related("assistant").get(room=room, handle="assistant")
        assert (a.mode, a.assistant.system_prompt) == ("always", "Be brief.")
        listed = ann.get(f"{base}/assistants").json()["assistants"][0]
        assert listed["system_prompt"] == "Be brief."

        before = stored_state(room)
        for bad in [
            {"name": ""},
            {"name": "x" * 121},
            {"visibility": "secret"},
            {"voice": "loud"},
            {"prompt_heard_text": "yes"},
            {"assistant": "off"},
            {"system_prompt": 5},
            {"slug": "new"},
            {"name": "Fine", "voice": "loud"},  # one bad field: nothing changes
        ]:
            r = ann.patch(base, json=bad)
            assert (r.status_code, r.json()["code"]) == (400, "bad_request"), bad
        assert stored_state(room) == before


def test_members_roles_and_handles(server, team, make_user):
    room, base = team["room"], team["base"]
    make_user("coder")
    make_user("dan")
    with api(server, team["ann"]) as ann, api(server, team["bob"]) as bob:
        ann.post(
            f"{base}/assistants",
            json={"handle": "coder", "name": "Coder", "model": "default/fake-model"},
        ).raise_for_status()
        r = ann.post(f"{base}/members", json={"username": "coder"})
        assert (r.status_code, r.json()["code"]) == (400, "bad_request")
        assert not Membership.objects.filter(room=room, user__username="coder").exists()

        members = bob.get(f"{base}/members").json()
        assert members == {
            "members": [
                {"username": "ann", "role": "owner"},
                {"username": "bob", "role": "member"},
            ],
            "count": 2,
        }
        # A co-owner has the owner's rights.
        assert bob.post(f"{base}/members", json={"username": "dan"}).status_code == 403
        r = ann.patch(f"{base}/members/bob", json={"role": "owner"})
        assert r.json() == {"username": "bob", "role": "owner"}
        assert bob.post(f"{base}/members", json={"username": "dan"}).status_code == 200
        assert bob.patch(base, json={"name": "Bob's too"}).status_code == 200
        assert bob.patch(f"{base}/assistants/coder", json={"name": "C"}).status_code == 200
        assert bob.delete(f"{base}/members/dan").status_code == 204
        # The creator stays an owner and stays in the room.
        r = bob.patch(f"{base}/members/ann", json={"role": "member"})
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert bob.delete(f"{base}/members/ann").status_code == 403
        for bad in [{"role": "king"}, {"role": None}, {}]:
            assert ann.patch(f"{base}/members/bob", json=bad).status_code == 400
        assert ann.patch(f"{base}/members/nobody", json={"role": "owner"}).status_code == 404
        assert ann.patch(f"{base}/members/bob", json={"role": "member"}).status_code == 200
        assert bob.patch(base, json={"name": "Not any more"}).status_code == 403


def test_a_co_owner_controls_any_reply(team, make_user):
    from chat.models import Message, Role
    from chat.selectors import reply_for_control

    room = team["room"]
    dan, _ = make_user("dan")
    Membership.objects.create(room=room, user=dan)
    asked = Message.objects.create(room=room, role=Role.USER, author=room.owner, text="q")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, reply_to=asked, status="streaming"
    )
    from chat.errors import Forbidden

    with pytest.raises(Forbidden):
        reply_for_control(message_id=reply.pk, user=dan)
    Membership.objects.filter(room=room, user=dan).update(role="owner")
    assert reply_for_control(message_id=reply.pk, user=dan) == reply


def test_signup_refuses_an_assistants_handle(server, team):
    Assistant.objects.create(room=None, handle="translator", name="T", provider="default")
    with closing(httpx.Client(base_url=server.http_url, timeout=15)) as c:
        form = c.get("/accounts/signup/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert csrf
        data = {
            "username": "Translator",
            "password1": "a-long-pass-4567",
            "password2": "a-long-pass-4567",
            "csrfmiddlewaretoken": csrf[1],
        }
        r = c.post("/accounts/signup/", data=data)
        assert r.status_code == 200
        assert "That name is an assistant&#x27;s handle." in r.text
    from django.contrib.auth import get_user_model

    assert not get_user_model().objects.filter(username="Translator").exists()


# --- Invites ------------------------------------------------------------------------------


def test_invite_link_joins_a_private_room_and_stops_when_revoked_or_expired(
    server, team, make_user
):
    room, base = team["room"], team["base"]
    make_user("eve")
    with api(server, team["ann"]) as ann, closing(logged_in(server, "eve")) as eve:
        r = ann.post(f"{base}/invites")
        assert r.status_code == 201, r.text
        invite = r.json()
        assert invite["url"].endswith(f"/invite/{invite['token']}")
        assert len(invite["token"]) >= 32
        assert ann.get(f"{base}/invites").json()["invites"] == [invite]

        r = eve.get(f"/invite/{invite['token']}")
        assert (r.status_code, r.headers["location"]) == (302, f"/rooms/{room.slug}/")
        assert Membership.objects.filter(room=room, user__username="eve").exists()
        assert eve.get(f"/rooms/{room.slug}/").status_code == 200  # in, though private

        assert ann.delete(f"{base}/invites/{invite['token']}").status_code == 204
        assert ann.get(f"{base}/invites").json()["invites"] == []
        Membership.objects.filter(room=room, user__username="eve").delete()
        r = eve.get(f"/invite/{invite['token']}")
        assert r.status_code == 410
        assert "revoked" in r.text
        assert not Membership.objects.filter(room=room, user__username="eve").exists()

        old = ann.post(f"{base}/invites").json()
        Invite.objects.filter(token=old["token"]).update(
            expires=datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=1)
        )
        r = eve.get(f"/invite/{old['token']}")
        assert r.status_code == 410
        assert "expired" in r.text
        assert ann.get(f"{base}/invites").json()["invites"] == []
        assert eve.get("/invite/no-such-token").status_code == 404
        assert eve.get("/invite/bad%00token").status_code == 404
        assert ann.delete(f"{base}/invites/no-such-token").status_code == 404
    # Signed out: to the log-in page first.
    r = httpx.get(f"{server.http_url}/invite/{invite['token']}")
    assert r.status_code == 302
    assert "/accounts/login/" in r.headers["location"]


# --- The settings page ----------------------------------------------------------------------


def test_settings_page_for_owners_and_read_only_for_members(server, team, make_user):
    room = team["room"]
    make_user("cat2")
    with closing(logged_in(server, "ann")) as ann, closing(logged_in(server, "bob")) as bob:
        page = ann.get(f"/rooms/{room.slug}/settings")
        assert page.status_code == 200
        assert 'id="assistant-form"' in page.text
        assert "<script>" not in page.text  # config in a JSON script, code in a module
        assert re.search(r'src="/static/chat/js/settings\.[0-9a-f]{12}\.js"', page.text)
        config = re.search(
            r'<script id="parley-config" type="application/json">(.*?)</script>', page.text, re.S
        )
        assert config
        assert json.loads(config[1])["can_edit"] is True
        # The room page links to it.
        assert f'href="/rooms/{room.slug}/settings"' in ann.get(f"/rooms/{room.slug}/").text
        member = bob.get(f"/rooms/{room.slug}/settings")
        assert member.status_code == 200
        assert 'id="read-only"' in member.text
        assert 'id="assistant-form"' not in member.text
    with closing(logged_in(server, "cat2")) as cat:
        assert cat.get(f"/rooms/{room.slug}/settings").status_code == 404


# --- The live room event ----------------------------------------------------------------


async def test_room_events_reach_websocket_and_sse_and_replay_and_hello_are_current(server, team):
    room, base = team["room"], team["base"]
    ws = await RoomClient.connect(server.ws_url, room.slug, token=team["bob"])
    hello = await ws.wait_type("hello")
    head = hello["head"]
    async with httpx.AsyncClient(
        base_url=server.http_url, headers={"Authorization": f"Bearer {team['bob']}"}, timeout=15
    ) as http:
        sse = await open_sse(http, f"{base}/events")
        await sse.wait_for(lambda e: e.get("type") == "hello")
        async with httpx.AsyncClient(
            base_url=server.http_url,
            headers={"Authorization": f"Bearer {team['ann']}"},
            timeout=15,
            event_hooks={"response": [_no_key_async]},
        ) as ann:
            r = await ann.patch(base, json={"name": "Renamed"})
            assert r.status_code == 200, r.text
            event = await ws.wait_type("room")
            assert event["room"]["name"] == "Renamed"
            assert "head" not in event["room"]
            assert event["seq"] == head + 1
            same = await sse.wait_for(lambda e: e.get("type") == "room")
            assert same == event
            r = await ann.post(
                f"{base}/assistants",
                json={"handle": "coder", "name": "Coder", "model": "beta/beta-small"},
            )
            assert r.status_code == 201, r.text
            added = await ws.wait_type("room")
            assert [a["handle"] for a in added["room"]["assistants"]] == ["assistant", "coder"]
            assert added["room"]["assistants"][1]["model"] == "beta/beta-small"
            await sse.wait_for(lambda e: e.get("type") == "room" and e["seq"] == added["seq"])
            r = await ann.patch(f"{base}/members/bob", json={"role": "owner"})
            assert r.status_code == 200
            await ws.wait_type("room")
        for event in sse.events:
            assert not any(key in json.dumps(event) for key in KEYS)
        await sse.close()
    for event in ws.events:
        assert not any(key in json.dumps(event) for key in KEYS)
    # This process has seen the room events: a new hello (no resume) shows the room now,
    # and a resume from before them replays them in order.
    fresh = await RoomClient.connect(server.ws_url, room.slug, token=team["bob"])
    hello2 = await fresh.wait_type("hello")
    assert hello2["room"]["name"] == "Renamed"
    assert [a["handle"] for a in hello2["room"]["assistants"]] == ["assistant", "coder"]
    await fresh.close()
    resumed = await RoomClient.connect(server.ws_url, room.slug, token=team["bob"], after=head)
    await resumed.wait_type("hello")
    replayed = [await resumed.wait_type("room") for _ in range(3)]
    assert [e["seq"] for e in replayed] == [head + 1, head + 2, head + 3]
    assert replayed[0]["room"]["name"] == "Renamed"
    await resumed.close()
    await ws.close()
    assert await sync_to_async(lambda: Room.objects.get(pk=room.pk).name)() == "Renamed"


def test_room_body_is_the_room_object_without_its_head():
    from chat.events import room_body

    room = {"slug": "s", "name": "N", "head": 9, "assistants": []}
    assert room_body(room) == {"type": "room", "room": {"slug": "s", "name": "N", "assistants": []}}

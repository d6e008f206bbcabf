"""Conversations, replies and their timings are reviewed in the admin."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Generation, Message, Role, Status

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(admin_client, django_user_model):
    from accounts.services import api_token_create
    from chat.services import room_create

    owner = django_user_model.objects.create_user("ops", password="ops-pass-123")
    room = room_create(owner=owner, name="Reviewed")
    ask = Message.objects.create(room=room, role=Role.USER, author=owner, text="hi")
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="hello", status=Status.STOPPED, reply_to=ask
    )
    now = timezone.now()
    Generation.objects.create(
        message=reply,
        backend="openai",
        model="m",
        queued_at=now,
        started_at=now,
        first_token_at=now + timedelta(milliseconds=250),
        ended_at=now,
        stop_reason="user",
        stopped_by=owner,
        voice="streaming",
        audio_seconds=4.0,
        synthesis_seconds=0.5,
    )
    api_token_create(user=owner, name="laptop")
    return reply


def test_every_admin_list_and_reply_page_renders(admin_client, reviewed):
    for url in (
        "/admin/chat/room/",
        "/admin/chat/message/",
        "/admin/chat/generation/",
        "/admin/chat/membership/",
        "/admin/accounts/apitoken/",
        f"/admin/chat/message/{reviewed.pk}/change/",
    ):
        assert admin_client.get(url).status_code == 200, url
    page = admin_client.get("/admin/chat/generation/").content.decode()
    assert "250 ms" in page  # time to first token
    assert "0.12" in page  # synthesis real-time factor 0.5 / 4.0


def test_tokens_are_issued_once_and_revoked_in_the_admin(admin_client, django_user_model):
    from accounts.models import ApiToken

    user = django_user_model.objects.create_user("prog", password="prog-pass-123")
    r = admin_client.post(
        "/admin/accounts/apitoken/add/", {"user": user.pk, "name": "ci"}, follow=True
    )
    assert r.status_code == 200
    shown = [str(m) for m in r.context["messages"]]
    assert any("pk_" in m for m in shown)
    token = ApiToken.objects.get(user=user)
    raw = next(m for m in shown if "pk_" in m).split(": ")[-1]
    assert token.key_hash != raw
    admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}
    )
    token.refresh_from_db()
    assert token.revoked is not None


# --- Query counts: constant, whatever the number of rows --------------------------------


def _messages(count: int, django_user_model) -> None:
    from chat.services import room_create

    # No passwords: hashing a hundred of them would be most of the test's time.
    owner = django_user_model.objects.create_user(f"owner{count}")
    rooms = [room_create(owner=owner, name=f"Counted {count} {i}") for i in range(5)]
    authors = django_user_model.objects.bulk_create(
        [django_user_model(username=f"author{count}-{i}") for i in range(count)]
    )
    for i, author in enumerate(authors):
        room = rooms[i % len(rooms)]
        ask = Message.objects.create(room=room, role=Role.USER, author=author, text=f"find {i}")
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text=f"find r{i}", reply_to=ask
        )
        Generation.objects.create(message=reply, backend="openai", queued_at=timezone.now())


@pytest.mark.parametrize(
    "url",
    [
        "/admin/chat/message/",
        "/admin/chat/message/?q=find",
        "/admin/chat/message/?q=author",
        "/admin/chat/generation/",
        "/admin/chat/generation/?q=find",
        "/admin/chat/room/",
    ],
)
def test_changelists_make_the_same_number_of_queries_for_10_and_100_rows(
    admin_client, django_user_model, url
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    for rows in (10, 100):
        _messages(rows, django_user_model)
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(url + ("&" if "?" in url else "?") + "all=")
        assert response.status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1], (url, counts)
    # The reply list has two more than the rest: its figures (one query) and its
    # assistant, provider and model filters' choices (one DISTINCT query each).
    assert counts[1] <= (14 if "generation" in url else 12), counts


# --- Statuses are read-only; stopping a reply is an action through reply_control ------------


def test_a_reply_status_cannot_be_edited_in_the_admin(admin_client, reviewed):
    reviewed.status = Status.STREAMING
    reviewed.save(update_fields=["status"])
    url = f"/admin/chat/message/{reviewed.pk}/change/"
    form = admin_client.get(url).context["adminform"].form
    assert "status" not in form.fields
    data = {
        "room": reviewed.room_id,
        "role": reviewed.role,
        "text": reviewed.text,
        "reply_to": reviewed.reply_to_id,
        "client_id": "",
        "status": Status.STOPPED,
        "generation-TOTAL_FORMS": "1",
        "generation-INITIAL_FORMS": "1",
        "generation-MIN_NUM_FORMS": "0",
        "generation-MAX_NUM_FORMS": "1",
        "generation-0-id": reviewed.generation.pk,
        "generation-0-message": reviewed.pk,
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    reviewed.refresh_from_db()
    assert reviewed.status == Status.STREAMING


# --- Transcript and exports for reviewers -----------------------------------------------------


@pytest.fixture
def conversation(django_user_model):
    from chat.services import room_create, room_join

    owner = django_user_model.objects.create_user("rita", password="pw-12345678")
    guest = django_user_model.objects.create_user("gus", password="pw-12345678")
    room = room_create(owner=owner, name="Reviewed talk", visibility="private")
    room_join(room=room, user=owner)
    from chat.models import Membership

    Membership.objects.create(room=room, user=guest)
    ask = Message.objects.create(
        room=room, role=Role.USER, author=guest, text="### not a heading\nsecond <b>line</b>"
    )
    reply = Message.objects.create(
        room=room, role=Role.ASSISTANT, text="Half an ans", reply_to=ask, status=Status.STOPPED
    )
    Generation.objects.create(
        message=reply,
        backend="openai",
        model="m1",
        queued_at=timezone.now(),
        stop_reason="user",
        stopped_by=owner,
    )
    return room, ask, reply


def test_reviewers_read_a_transcript_and_export_it(admin_client, conversation):
    room, ask, reply = conversation
    change = admin_client.get(f"/admin/chat/room/{room.pk}/change/").content.decode()
    assert f"/admin/chat/room/{room.pk}/transcript/" in change

    page = admin_client.get(f"/admin/chat/room/{room.pk}/transcript/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Transcript of Reviewed talk" in html
    assert "second &lt;b&gt;line&lt;/b&gt;" in html  # message text is escaped
    assert html.index("### not a heading") < html.index("Half an ans")
    assert "stopped" in html

    exported = admin_client.get(f"/admin/chat/room/{room.pk}/export.json")
    assert exported["Content-Disposition"] == f'attachment; filename="{room.slug}.json"'
    body = exported.json()
    assert body["room"]["slug"] == room.slug
    assert body["members"] == ["gus", "rita"]
    assert [m["id"] for m in body["messages"]] == [str(ask.pk), str(reply.pk)]
    assert body["messages"][0]["author"] == "gus"
    assert body["messages"][1]["status"] == "stopped"
    assert body["messages"][1]["generation"]["stopped_by"] == "rita"
    assert body["messages"][1]["generation"]["model"] == "m1"

    md = admin_client.get(f"/admin/chat/room/{room.pk}/export.md")
    assert md["Content-Type"].startswith("text/markdown")
    text = md.content.decode()
    assert text.startswith("# Reviewed talk\n")
    assert f"### gus · {ask.created.isoformat(timespec='seconds')} · #{ask.pk}" in text
    assert "> ### not a heading\n> second <b>line</b>" in text  # quoted, not a heading
    assert "### assistant · " in text
    assert "· stopped (user by rita)" in text


def test_transcripts_are_for_staff_only(client, django_user_model, conversation):
    room, _, _ = conversation
    django_user_model.objects.create_user("nosy", password="pw-12345678")
    client.login(username="nosy", password="pw-12345678")
    for suffix in ("transcript/", "export.json", "export.md"):
        response = client.get(f"/admin/chat/room/{room.pk}/{suffix}")
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
    assert client.get("/admin/chat/room/999999/transcript/").status_code == 302


def test_a_transcript_reads_in_a_constant_number_of_queries(admin_client, conversation):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    room, ask, _ = conversation
    url = f"/admin/chat/room/{room.pk}/export.json"
    with CaptureQueriesContext(connection) as few:
        admin_client.get(url)
    for i in range(30):
        Message.objects.create(room=room, role=Role.USER, author=ask.author, text=f"more {i}")
    with CaptureQueriesContext(connection) as many:
        assert len(admin_client.get(url).json()["messages"]) == 32
    assert len(few) == len(many)


def test_the_transcript_shows_speech_what_was_heard_who_stopped_and_timings(
    admin_client, conversation
):
    room, ask, reply = conversation
    spoken = Message.objects.create(
        room=room, role=Role.USER, author=ask.author, text="what time is it", input="speech"
    )
    gen = reply.generation
    gen.started_at = timezone.now()
    gen.first_token_at = gen.started_at + timedelta(milliseconds=250)
    gen.ended_at = gen.started_at + timedelta(seconds=2)
    gen.paused_seconds = 0.5
    gen.completion_tokens = 9
    gen.heard_text = "Half an"
    gen.heard_ms = 1200
    gen.save()

    html = admin_client.get(f"/admin/chat/room/{room.pk}/transcript/").content.decode()
    said = html[html.index(f'id="m{spoken.pk}"') :]
    said = said[: said.index("</article>")]
    assert ">spoken</span>" in said
    typed = html[html.index(f'id="m{ask.pk}"') :]
    assert ">spoken</span>" not in typed[: typed.index("</article>")]
    answer = html[html.index(f'id="m{reply.pk}"') :]
    answer = answer[: answer.index("</article>")]
    assert (
        "Heard by the member who cut it off (the first 1200 ms of audio):</span> Half an" in answer
    )
    assert "stopped by rita · first token 250 ms · took 1.5 s · 9 tokens" in answer

    md = admin_client.get(f"/admin/chat/room/{room.pk}/export.md").content.decode()
    assert f"· #{spoken.pk} · spoken\n" in md
    assert "_stopped by rita · first token 250 ms · took 1.5 s · 9 tokens_" in md
    assert "Heard by the member who cut it off (the first 1200 ms):\n\n> Half an" in md
    exported = admin_client.get(f"/admin/chat/room/{room.pk}/export.json").json()
    made = exported["messages"][1]["generation"]
    assert (made["ttft_ms"], made["duration_ms"]) == (250.0, 1500.0)
    assert (made["heard_text"], made["heard_ms"]) == ("Half an", 1200)


def test_a_generation_is_shown_as_facts_not_a_form(admin_client, reviewed):
    gen = reviewed.generation
    url = f"/admin/chat/generation/{gen.pk}/change/"
    page = admin_client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    assert "250 ms" in html  # time to first token
    assert 'name="_save"' not in html  # no Save
    assert "datetimeshortcuts" not in html  # no date pickers
    form = html.split('id="generation_form"', 1)[-1].split("</form>", 1)[0]
    assert not re.findall(r'<(?:textarea|select)\b|<input\b(?![^>]*type="hidden")', form)
    # Nor can it be changed or made by a request that skips the page.
    before = gen.queued_at
    assert admin_client.post(url, {"backend": "x", "queued_at_0": "2020-01-01"}).status_code == 403
    gen.refresh_from_db()
    assert (gen.backend, gen.queued_at) == ("openai", before)
    assert admin_client.get("/admin/chat/generation/add/").status_code == 403
    # The reply's own page still shows it (read-only), and the list still renders.
    assert admin_client.get(f"/admin/chat/message/{reviewed.pk}/change/").status_code == 200
    assert admin_client.get("/admin/chat/generation/").status_code == 200


# --- Providers, assistants and the figures of replies (issue 18) ---------------------------

SECRET = "sk-provider-secret-4242"


def test_a_provider_s_key_is_write_only(admin_client):
    from chat.models import Provider

    r = admin_client.post(
        "/admin/chat/provider/add/",
        {"name": "fast", "base_url": "http://127.0.0.1:9/v1", "api_key": SECRET},
        follow=True,
    )
    assert r.status_code == 200
    provider = Provider.objects.get(name="fast")
    assert provider.api_key == SECRET
    listing = admin_client.get("/admin/chat/provider/").content.decode()
    assert "fast" in listing
    assert 'alt="True"' in listing  # the "key set" column
    change_url = f"/admin/chat/provider/{provider.pk}/change/"
    page = admin_client.get(change_url).content.decode()
    assert 'type="password"' in page
    # Saved again without typing a key: the key stays, and no page ever showed it.
    admin_client.post(change_url, {"name": "fast", "base_url": "http://127.0.0.1:9/v2"})
    provider.refresh_from_db()
    assert (provider.base_url, provider.api_key) == ("http://127.0.0.1:9/v2", SECRET)
    history = admin_client.get(f"{change_url.rsplit('change/', 1)[0]}history/").content.decode()
    for shown in (listing, page, history, r.content.decode()):
        assert SECRET not in shown
    admin_client.post(
        change_url, {"name": "fast", "base_url": "http://127.0.0.1:9/v2", "clear_key": "on"}
    )
    provider.refresh_from_db()
    assert provider.api_key == ""
    assert 'alt="False"' in admin_client.get("/admin/chat/provider/").content.decode()


def test_a_provider_url_must_be_http(admin_client):
    from chat.models import Provider

    r = admin_client.post(
        "/admin/chat/provider/add/",
        {"name": "odd", "base_url": "ftp://models.example/v1", "api_key": SECRET},
    )
    assert r.status_code == 200  # the form again, with its error
    assert "must be http:// or https://" in r.content.decode()
    assert SECRET not in r.content.decode()
    assert not Provider.objects.filter(name="odd").exists()


def test_shared_assistants_are_made_here_and_rooms_own_are_filtered(
    admin_client, django_user_model
):
    from chat.models import Assistant
    from chat.services import room_create

    owner = django_user_model.objects.create_user("roomer")
    room = room_create(owner=owner, name="Filtered")
    fields = {
        "handle": "translator",
        "name": "Translator",
        "avatar": "🌍",
        "provider": "default",
        "model": "",
        "system_prompt": "Translate.",
        "temperature": "0.3",
        "max_tokens": "",
        "voice": "",
    }
    r = admin_client.post("/admin/chat/assistant/add/", fields)
    assert r.status_code == 302, r.content.decode()[:2000]
    shared = Assistant.objects.get(handle="translator")
    assert shared.room is None
    # Bad input: a clear error on the form, and nothing stored.
    for bad, words in (
        ({"provider": "nowhere"}, "no provider named"),
        ({"temperature": "7"}, "temperature must be from"),
        ({"handle": "Not A Handle"}, "A handle is a lowercase letter"),
        ({"handle": "assistant"}, "kept for rooms&#x27; first assistants"),
    ):
        form = {**fields, "handle": "other", **bad}
        r = admin_client.post("/admin/chat/assistant/add/", form)
        assert r.status_code == 200
        assert words in r.content.decode()
        assert not Assistant.objects.filter(handle=form["handle"], room=None).exists()

    shared_only = admin_client.get("/admin/chat/assistant/?kind=shared").content.decode()
    rooms_only = admin_client.get("/admin/chat/assistant/?kind=room").content.decode()
    assert "Translator" in shared_only
    assert "Translator" not in rooms_only
    assert room.slug in rooms_only  # the room's first assistant, listed with its room
    by_room = admin_client.get(f"/admin/chat/assistant/?room__id__exact={room.pk}")
    assert by_room.status_code == 200
    assert "Translator" not in by_room.content.decode()

    # The room's page lists its assistants.
    page = admin_client.get(f"/admin/chat/room/{room.pk}/change/").content.decode()
    assert 'value="assistant"' in page  # the placement's handle


def _replies(room, *, handle: str, name: str, provider: str, model: str, ttfts, tokens=10):
    from chat.models import Message

    now = timezone.now()
    for i, ttft_ms in enumerate(ttfts):
        ask = Message.objects.create(room=room, role=Role.USER, author=room.owner, text=f"q{i}")
        reply = Message.objects.create(
            room=room, role=Role.ASSISTANT, text=f"a{i}", reply_to=ask, status=Status.COMPLETE
        )
        Generation.objects.create(
            message=reply,
            backend="openai",
            handle=handle,
            assistant_name=name,
            provider=provider,
            model=model,
            queued_at=now,
            started_at=now,
            first_token_at=now + timedelta(milliseconds=ttft_ms),
            ended_at=now + timedelta(seconds=2),  # 10 tokens in 2 s: 5 tokens/s
            completion_tokens=tokens,
        )


def _figures(response) -> dict[str, list[str]]:
    """The figures tables' rows as text, by their first cell."""
    html = response.content.decode()
    block = html.split('id="reply-figures"', 1)[1].split("</div>", 1)[0]
    rows = {}
    for row in re.findall(r"<tr><th scope=\"row\">(.*?)</tr>", block, re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", "<th>" + row)
        rows[row.split("<", 1)[0]] = [re.sub(r"\s+", " ", c).strip() for c in cells]
    return rows


def test_the_reply_list_shows_figures_per_assistant_and_model_for_its_filter(
    admin_client, django_user_model
):
    from chat.services import room_create

    owner = django_user_model.objects.create_user("figures")
    room = room_create(owner=owner, name="Figures")
    _replies(room, handle="coder", name="Coder", provider="fast", model="m1", ttfts=[100, 300, 200])
    _replies(room, handle="assistant", name="Assistant", provider="default", model="m2", ttfts=[50])
    figures = _figures(admin_client.get("/admin/chat/generation/"))
    assert figures["Coder (@coder)"][1:] == ["3", "200.0 ms", "5.0", "complete 3"]
    assert figures["Assistant (@assistant)"][1:4] == ["1", "50.0 ms", "5.0"]
    assert figures["fast/m1"][1] == "3"
    assert figures["default/m2"][1] == "1"
    # The list's filter is the figures' filter.
    filtered = _figures(admin_client.get("/admin/chat/generation/?provider=fast"))
    assert set(filtered) == {"Coder (@coder)", "fast/m1"}


def test_the_reply_figures_take_the_same_queries_for_1_and_50_replies(
    admin_client, django_user_model
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from chat.services import room_create

    counts = []
    for n, rows in enumerate((1, 50)):
        owner = django_user_model.objects.create_user(f"counted{n}")
        room = room_create(owner=owner, name=f"Counted {n}")
        _replies(
            room, handle=f"a{n}", name=f"A{n}", provider="p", model=f"m{n}", ttfts=[100] * rows
        )
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get("/admin/chat/generation/")
        assert response.status_code == 200
        assert f"A{n} (@a{n})" in _figures(response)
        counts.append(len(queries))
    assert counts[0] == counts[1], counts


def test_transcripts_name_each_reply_s_assistant(admin_client, conversation):
    room, _, reply = conversation
    Generation.objects.filter(message=reply).update(
        handle="coder", assistant_name="Coder", provider="fast"
    )
    html = admin_client.get(f"/admin/chat/room/{room.pk}/transcript/").content.decode()
    assert "Coder (@coder)" in html
    body = admin_client.get(f"/admin/chat/room/{room.pk}/export.json").json()
    assert [a["handle"] for a in body["room"]["assistants"]] == ["assistant"]
    made = body["messages"][1]
    assert made["assistant"] == {"handle": "coder", "name": "Coder", "model": "fast/m1"}
    assert made["generation"]["provider"] == "fast"
    text = admin_client.get(f"/admin/chat/room/{room.pk}/export.md").content.decode()
    assert "### Coder (@coder) · " in text


def test_staff_who_may_only_view_providers_never_see_a_key(client, django_user_model):
    from django.contrib.auth.models import Permission

    from chat.models import Provider

    provider = Provider.objects.create(
        name="viewed", base_url="http://127.0.0.1:9/v1", api_key=SECRET
    )
    viewer = django_user_model.objects.create_user("viewer", password="pw-12345678", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_provider"))
    client.login(username="viewer", password="pw-12345678")
    for url in ("/admin/chat/provider/", f"/admin/chat/provider/{provider.pk}/change/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert SECRET not in response.content.decode(), url
    assert "viewed" in client.get("/admin/chat/provider/").content.decode()

"""The terminal chat (``python -m parley_client``) in a real pseudo-terminal, against a
real daphne: it joins, sends, shows a reply streaming in place, pauses, resumes and stops
it, shows who is online and typing, survives a drop mid-reply, and exits cleanly. Bad
conditions end in one clear line and a non-zero exit."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import httpx
import pytest

from parley_client import Client
from tests.support.daphne import free_port
from tests.support.openai_server import Scenario
from tests.support.terminal import Terminal
from tests.support.tts_servers import FakeSpeechServer

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
WORDS = [f"word{i} " for i in range(80)]


def chat(*args: str, token: str | None = None) -> Terminal:
    env = {"PARLEY_TOKEN": token} if token else {}
    return Terminal(["-m", "parley_client", *args], env=env, cwd=ROOT)


def stored(daphne, token: str, message_id: str) -> dict:
    r = httpx.get(
        f"{daphne.http_url}/api/messages/{message_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    return r.json()


def last_reply_id(daphne, token: str, slug: str) -> str:
    r = httpx.get(
        f"{daphne.http_url}/api/rooms/{slug}/messages",
        headers={"Authorization": f"Bearer {token}"},
    )
    return next(m["id"] for m in reversed(r.json()["messages"]) if m["role"] == "assistant")


def squash(text: str) -> str:
    """``text`` without whitespace: the screen wraps long lines where it must."""
    return "".join(text.split())


async def wait(term: Terminal, text: str, timeout: float = 20.0) -> str:
    return await asyncio.to_thread(term.wait_text, text, timeout)


async def test_join_send_watch_pause_resume_stop_and_quit(daphne, llm, members):
    room, tokens = members
    llm.script(Scenario.normal(["Hello, ", "bob."]))
    llm.set_default(Scenario.slow(WORDS, delay=0.05))
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests (client-tests)")
        await wait(term, "online: ann")
        async with (
            Client(daphne.http_url, token=tokens["bob"]) as bob_client,
            bob_client.room(room.slug) as bob,
        ):
            await wait(term, "online: ann, bob")
            await bob.typing()
            await wait(term, "bob is typing")
            await bob.send("hi ann")
            await wait(term, "bob: hi ann")
            # The room answers everyone: bob's short reply, printed whole with its metrics.
            await wait(term, "Assistant: Hello, bob.")
            await wait(term, "(complete · 2 tokens · first token")

        term.send("tell me @assistant\r")
        await wait(term, "ann: tell me @assistant")
        screen = await wait(term, "Assistant (streaming)")
        await wait(term, "word3")
        term.send("/pause\r")
        await wait(term, "Assistant (paused)")
        term.send("/resume\r")
        await wait(term, "Assistant (streaming)")
        await wait(term, "word10")
        term.send("\x03")  # Ctrl-C once: stop the reply
        screen = await wait(term, "(stopped by ann · ")
        reply_id = last_reply_id(daphne, tokens["ann"], room.slug)
        reply = stored(daphne, tokens["ann"], reply_id)
        assert reply["status"] == "stopped"
        # What the chat printed is exactly what was delivered and stored.
        assert squash(f"Assistant: {reply['text']}") in squash(screen)
        assert "Assistant (streaming)" not in screen
        term.send("\x03\x03")  # twice: quit
        assert await asyncio.to_thread(term.wait_exit) == 0
        assert "Traceback" not in term.plain()
    finally:
        term.close()


async def test_a_waiting_reply_shows_its_place_in_line(daphne, llm, members):
    room, tokens = members
    llm.script(Scenario.stepped(["Done one."]), Scenario.stepped(["Done two."]))
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "online: ann")
        async with (
            Client(daphne.http_url, token=tokens["bob"]) as bob_client,
            bob_client.room(room.slug) as bob,
        ):
            await bob.send("first")
            await wait(term, "Assistant (streaming)")
            await bob.send("second")
            await wait(term, "Assistant (queued · 2nd in line)")
            llm.step()
            await wait(term, "Assistant: Done one.")
            llm.step()
            screen = await wait(term, "Assistant: Done two.")
            assert "in line" not in screen.rsplit("Assistant: Done two.", 1)[1]
        term.send("\x03\x03")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()


async def test_a_drop_mid_reply_goes_on_without_a_gap(daphne, llm, members, proxy):
    room, tokens = members
    llm.set_default(Scenario.slow(WORDS[:40], delay=0.05))
    term = chat("--url", proxy.url, "--transport", "websocket", room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests")
        term.send("go on @assistant\r")
        await wait(term, "word5")
        await proxy.cut()
        await wait(term, "reconnected over websocket")
        screen = await wait(term, "(complete")
        reply = stored(daphne, tokens["ann"], last_reply_id(daphne, tokens["ann"], room.slug))
        assert reply["text"] == "".join(WORDS[:40])
        assert squash(f"Assistant: {reply['text']}") in squash(screen)
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()


# Words of many lengths, each one once: a word cut by a line break shows as a fragment.
LONG_WORDS = [f"{'ab' * (i % 5)}w{i}" for i in range(60)]


async def test_long_lines_wrap_at_word_boundaries_and_spoken_messages_are_marked(
    daphne, llm, members
):
    from chat.models import InputKind, Message, Role

    room, tokens = members
    llm.set_default(Scenario.normal(["ok"]))

    def history() -> None:
        users = {m.user.username: m.user for m in room.memberships.select_related("user")}
        Message.objects.create(
            room=room,
            role=Role.USER,
            author=users["cat"],
            text="this one was spoken aloud",
            input=InputKind.SPEECH,
        )
        Message.objects.create(room=room, role=Role.USER, author=users["bob"], text="typed")

    await asyncio.to_thread(history)
    term = Terminal(
        ["-m", "parley_client", "--url", daphne.http_url, room.slug],
        env={"PARLEY_TOKEN": tokens["ann"]},
        cwd=ROOT,
        cols=50,
    )
    try:
        await wait(term, "joined Client tests")
        await wait(term, "cat (spoken): this one was spoken aloud")
        # The history prints in order; wait for its last line (not just the first).
        screen = await wait(term, "bob: typed")  # a typed message has no mark
        assert "bob (spoken)" not in screen
        async with (
            Client(daphne.http_url, token=tokens["bob"]) as bob_client,
            bob_client.room(room.slug) as bob,
        ):
            await bob.send(" ".join(LONG_WORDS), ask_ai=False)
            screen = await wait(term, LONG_WORDS[-1])
        lines = screen.splitlines()
        start = next(i for i, line in enumerate(lines) if "bob: " in line and "w0" in line)
        end = next(i for i in range(start, len(lines)) if LONG_WORDS[-1] in lines[i])
        block = [lines[start].split("bob: ", 1)[1], *lines[start + 1 : end + 1]]
        assert len(block) > 5  # it did wrap, at 50 columns
        shown = [word for line in block for word in line.split()]
        # Every word whole, in order, each line within the width, later lines indented.
        assert shown == LONG_WORDS
        assert all(len(line) <= 50 for line in lines[start : end + 1])
        assert all(line.startswith(" " * 8) and line[8] != " " for line in block[1:])
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()


def one_line_failure(term: Terminal) -> tuple[int, str]:
    status = term.wait_exit()
    lines = [line for line in term.plain().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return status, lines[0]


def test_server_unreachable(members):
    room, tokens = members
    url = f"http://127.0.0.1:{free_port()}"
    status, line = one_line_failure(chat("--url", url, room.slug, token=tokens["ann"]))
    assert status == 3
    assert line == f"parley-chat: cannot reach {url} (connection refused)"


def test_wrong_token(daphne, members):
    room, _ = members
    status, line = one_line_failure(chat("--url", daphne.http_url, room.slug, token="pk_wrong"))
    assert status == 4
    assert line == f"parley-chat: {daphne.http_url} refused the token (wrong or revoked?)"


def test_rooms_not_yours(daphne, members, dora_rooms):
    _, tokens = members
    private, public = dora_rooms
    status, line = one_line_failure(
        chat("--url", daphne.http_url, private.slug, token=tokens["ann"])
    )
    assert status == 5
    assert line == (
        f"parley-chat: no room {private.slug!r} that you can see "
        "(private rooms show only to members)"
    )
    status, line = one_line_failure(
        chat("--url", daphne.http_url, public.slug, token=tokens["ann"])
    )
    assert status == 5
    assert "not a member" in line
    assert "--join" in line


def test_no_token():
    status, line = one_line_failure(chat("--url", "http://127.0.0.1:9", "lobby"))
    assert (status, line) == (2, "parley-chat: no token: pass --token or set PARLEY_TOKEN")


def test_without_a_room_it_lists_them_to_pick_from(daphne, members):
    room, tokens = members
    term = chat("--url", daphne.http_url, token=tokens["ann"])
    try:
        term.wait_text("Rooms:")
        term.wait_text(room.slug)
        term.wait_text("room>")
        term.send(room.slug + "\r")
        term.wait_text("joined Client tests")
        term.send("\x04")  # Ctrl-D quits
        assert term.wait_exit() == 0
    finally:
        term.close()


async def test_commands_rooms_join_help_voice_and_audio(
    daphne_factory, llm, members, dora_rooms, tmp_path
):
    room, tokens = members
    _, public = dora_rooms
    llm.set_default(Scenario.normal(["Spoken ", "words."]))
    speech = FakeSpeechServer().start()
    try:
        server = daphne_factory(
            TTS_BACKEND="openai", OPENAI_TTS_BASE_URL=speech.base_url, OPENAI_TTS_API_KEY="sk"
        )
        term = chat("--url", server.http_url, room.slug, token=tokens["ann"])
        try:
            await wait(term, "joined Client tests")
            term.send("/help\r")
            await wait(term, "/voice MODE")
            term.send("/rooms\r")
            await wait(term, "client-tests             Client tests · public · owner ann (here)")
            term.send("/nonsense\r")
            await wait(term, "unknown command /nonsense; /help lists them")
            term.send(f"/audio {tmp_path / 'reply.wav'}\r")
            await wait(term, "spoken replies will be saved as")
            term.send("/voice streaming\r")
            await wait(term, "next reply: voice streaming")
            term.send("say it @assistant\r")
            screen = await wait(term, "s of audio to", timeout=30)
            saved = list(tmp_path.glob("reply-*.wav"))
            assert len(saved) == 1
            assert saved[0].name in squash(screen)
            with wave.open(str(saved[0])) as wav:
                assert wav.getframerate() == 24000
                assert wav.getnframes() > 0
            # Only that reply was spoken: the voice mode was for the next reply.
            term.send("again, silently @assistant\r")
            await wait(term, "again, silently")
            await asyncio.to_thread(
                term.wait_for, lambda s: s.count("(complete") == 2, 20, "two replies"
            )
            assert len(speech.requests) == 1
            term.send(f"/join {public.slug}\r")
            await wait(term, f"joined Dora's public ({public.slug})")
            term.send("/quit\r")
            assert await asyncio.to_thread(term.wait_exit) == 0
        finally:
            term.close()
    finally:
        speech.stop()


async def test_a_token_revoked_mid_chat_ends_it_with_one_line(daphne, members, proxy):
    from asgiref.sync import sync_to_async

    from accounts.models import ApiToken, hash_token
    from accounts.services import api_token_revoke

    room, tokens = members
    term = chat("--url", proxy.url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests")
        token = await sync_to_async(ApiToken.objects.get)(key_hash=hash_token(tokens["ann"]))
        await sync_to_async(api_token_revoke)(token=token)
        await proxy.cut()
        assert await asyncio.to_thread(term.wait_exit) == 4
        assert f"parley-chat: {proxy.url} refused the token (wrong or revoked?)" in term.plain()
        assert "Traceback" not in term.plain()
    finally:
        term.close()


async def test_assistants_lists_the_room_s_assistants(daphne, llm, members):
    from tests.support.assistants import add_assistant

    room, tokens = members
    await asyncio.to_thread(
        add_assistant, room, "coder", "Coder", model="fake-model", mode="mention"
    )
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests")
        term.send("/assistants\r")
        screen = await wait(term, "@coder")
        assert "Assistant · default/fake-model · answers every message" in screen
        assert "Coder · default/fake-model · answers when mentioned" in screen
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()


async def test_a_mentioned_assistant_s_reply_is_labelled_with_its_name(daphne, llm, members):
    """The mentioned assistant answers, not the room's first, under its own name."""
    from tests.support.assistants import add_assistant

    room, tokens = members
    await asyncio.to_thread(
        add_assistant, room, "coder", "Code Reviewer", model="fake-model", mode="mention"
    )
    llm.set_default(Scenario.normal(["Looks ", "fine."]))
    term = chat("--url", daphne.http_url, room.slug, token=tokens["ann"])
    try:
        await wait(term, "joined Client tests")
        term.send("review this @coder\r")
        # Its name, and the handle that asks it (a name that is its handle is not repeated).
        screen = await wait(term, "Code Reviewer (@coder): Looks fine.")
        # Only coder answered: the room's first assistant stays quiet when another is asked.
        assert "Assistant: Looks fine." not in screen
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()


async def test_a_room_event_updates_the_assistants(daphne, llm, members):
    """Assistants added and removed through the API reach an open session live."""
    room, tokens = members
    term = chat("--url", daphne.http_url, room.slug, token=tokens["bob"])
    try:
        await wait(term, "joined Client tests")
        async with Client(daphne.http_url, token=tokens["ann"]) as ann:
            await ann.create_assistant(
                room.slug, "translator", name="Translator", model="default/fake-model"
            )
            await wait(term, "@translator (Translator) joined the room")
            term.send("/assistants\r")
            await wait(term, "Translator · default/fake-model · answers when mentioned")
            await ann.delete_assistant(room.slug, "translator")
            await wait(term, "@translator (Translator) left the room")
        term.send("/quit\r")
        assert await asyncio.to_thread(term.wait_exit) == 0
    finally:
        term.close()

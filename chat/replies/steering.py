"""What the reply runner does next, and the figures of a finished reply: pure functions.

The runner (``ReplyRun._steer``) looks at one ``Moment`` and asks ``decide`` what to do:
stop a pause that ran out, deliver the pending text (after the room's outbound drained,
for at most what is left of ``max_wait``), finish, save the text so far, or wait (with a
timeout for whichever of those comes due first). Nothing here awaits or reads a clock,
so every rule is unit-tested on its own (tests/chat/test_steering.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from django.conf import settings


@dataclass(frozen=True)
class Cadence:
    """The runner's settings (each explained where it is set, config/settings.py)."""

    gap: float  # PARLEY_DELTA_MIN_INTERVAL: at least this between two deltas
    max_wait: float  # PARLEY_DELTA_MAX_WAIT: at most this waiting for the outbound to drain
    save_interval: float  # PARLEY_SAVE_INTERVAL: text saved at most this often
    pause_timeout: float  # PARLEY_PAUSE_TIMEOUT: a pause this long ends the reply

    @classmethod
    def from_settings(cls) -> Cadence:
        return cls(
            gap=settings.PARLEY_DELTA_MIN_INTERVAL,
            max_wait=settings.PARLEY_DELTA_MAX_WAIT,
            save_interval=settings.PARLEY_SAVE_INTERVAL,
            pause_timeout=settings.PARLEY_PAUSE_TIMEOUT,
        )


@dataclass(frozen=True)
class Moment:
    """What the runner knows at one instant (monotonic seconds)."""

    now: float
    paused: bool
    paused_at: float | None
    pending: bool  # text read from the model that members have not been shown
    reader_done: bool  # the model's stream has ended (or failed)
    last_emit: float  # when the last delta went out
    delivered_len: int  # pieces shown so far
    saved_len: int  # pieces saved so far
    last_save: float


Action = Literal["pause_timeout", "deliver", "finish", "save", "wait"]


@dataclass(frozen=True)
class Step:
    action: Action
    # deliver: how long the previous delta may still be drained before this one goes;
    # wait: how long to wait for a wake-up (None: until one comes).
    seconds: float | None = None


def decide(m: Moment, c: Cadence) -> Step:
    if m.paused and m.paused_at is not None and m.now - m.paused_at >= c.pause_timeout:
        return Step("pause_timeout")
    timeout: float | None = None
    if not m.paused and m.pending:
        wait = m.last_emit + c.gap - m.now
        if wait <= 0:
            # The previous delta must have reached this process's members (or waited
            # max_wait): while it is being written, more text piles up and leaves as one.
            return Step("deliver", m.last_emit + c.max_wait - m.now)
        timeout = wait
    if m.reader_done and not m.pending and not m.paused:
        return Step("finish")
    if m.delivered_len != m.saved_len:
        due = m.last_save + c.save_interval - m.now
        if due <= 0:
            return Step("save")
        timeout = due if timeout is None else min(timeout, due)
    if m.paused and m.paused_at is not None:
        due = m.paused_at + c.pause_timeout - m.now
        timeout = due if timeout is None else min(timeout, due)
    return Step("wait", None if timeout is None else max(timeout, 0.0))


def reply_metrics(
    *,
    ended: float,
    started_at: float | None,
    first_token_at: float | None,
    paused_total: float,
    completion_tokens: int | None,
    pieces: int,
) -> dict[str, float | int | None]:
    """The figures a terminal ``generation`` event carries (docs/protocol.md): time to
    first token, streaming time without pauses, tokens (the model's count, else the
    pieces it sent) and their rate, time paused."""
    tokens = completion_tokens if completion_tokens is not None else pieces
    streamed = None
    ttft = None
    if started_at is not None:
        streamed = ended - started_at - paused_total
        if first_token_at is not None:
            ttft = first_token_at - started_at
    return {
        "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
        "duration_ms": round(streamed * 1000, 1) if streamed is not None else None,
        "tokens": tokens,
        "tokens_per_second": round(tokens / streamed, 2) if streamed else None,
        "paused_ms": round(paused_total * 1000, 1),
    }

"""The reply runner's rules (chat/replies/steering.py), one at a time and as properties.

What a member notices through them: text goes out at once in a quiet room and never more
often than the minimum gap; a paused reply shows nothing until it resumes and is ended
once the pause runs out; a reply ends only once the model is done and everything read
has been shown; the text is saved regularly while it streams; the finished reply's
figures (time to first token, speed) leave out the time it was paused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.replies.steering import Cadence, Moment, Step, decide, reply_metrics

# Deliberately unlike one another, so a rule that used the wrong one shows.
CADENCE = Cadence(gap=0.1, max_wait=0.5, save_interval=2.0, pause_timeout=30.0)
NOW = 1000.0


def pair(step: Step) -> tuple[str, float | None]:
    """(action, seconds), to compare with ``pytest.approx`` seconds."""
    return step.action, step.seconds


def moment(**changes: Any) -> Moment:
    """A streaming reply with nothing to do: not paused, nothing pending or unsaved, the
    last delta and the last save long ago."""
    quiet = Moment(
        now=NOW,
        paused=False,
        paused_at=None,
        pending=False,
        reader_done=False,
        last_emit=NOW - 100,
        delivered_len=4,
        saved_len=4,
        last_save=NOW - 100,
    )
    return replace(quiet, **changes)


# --- delivering -----------------------------------------------------------------------


def test_pending_text_goes_out_at_once_when_the_last_delta_was_long_ago() -> None:
    step = decide(moment(pending=True), CADENCE)

    assert step.action == "deliver"


def test_pending_text_goes_out_exactly_once_the_gap_has_passed() -> None:
    step = decide(moment(pending=True, last_emit=NOW - CADENCE.gap), CADENCE)

    assert step.action == "deliver"


def test_pending_text_within_the_gap_waits_for_what_is_left_of_it() -> None:
    step = decide(moment(pending=True, last_emit=NOW - CADENCE.gap / 4), CADENCE)

    assert step.action == "wait"
    assert step.seconds == pytest.approx(CADENCE.gap * 3 / 4)


def test_a_delivery_may_wait_for_the_outbound_until_max_wait_after_the_last_delta() -> None:
    last_emit = NOW - 0.2  # past the gap, inside max_wait
    step = decide(moment(pending=True, last_emit=last_emit), CADENCE)

    assert pair(step) == ("deliver", pytest.approx(last_emit + CADENCE.max_wait - NOW))
    assert step.seconds is not None
    assert 0 < step.seconds < CADENCE.max_wait


def test_a_delivery_long_after_the_last_delta_has_no_drain_budget_left() -> None:
    step = decide(moment(pending=True, last_emit=NOW - 5), CADENCE)

    assert pair(step) == ("deliver", pytest.approx(CADENCE.max_wait - 5))
    assert step.seconds is not None
    assert step.seconds <= 0


def test_a_paused_reply_with_pending_text_shows_nothing() -> None:
    step = decide(moment(paused=True, paused_at=NOW - 1, pending=True), CADENCE)

    assert step.action == "wait"
    # It wakes for the pause's end, not for the text it holds.
    assert step.seconds == pytest.approx(CADENCE.pause_timeout - 1)


# --- finishing ------------------------------------------------------------------------


def test_a_reply_finishes_once_the_model_is_done_and_everything_was_shown() -> None:
    assert decide(moment(reader_done=True), CADENCE).action == "finish"


def test_a_reply_with_text_still_to_show_does_not_finish() -> None:
    step = decide(moment(reader_done=True, pending=True), CADENCE)

    assert step.action == "deliver"


def test_a_reply_with_text_still_to_show_within_the_gap_waits_instead_of_finishing() -> None:
    step = decide(moment(reader_done=True, pending=True, last_emit=NOW), CADENCE)

    assert pair(step) == ("wait", pytest.approx(CADENCE.gap))


def test_a_paused_reply_does_not_finish_even_when_the_model_is_done() -> None:
    step = decide(moment(reader_done=True, paused=True, paused_at=NOW - 3), CADENCE)

    assert pair(step) == ("wait", pytest.approx(CADENCE.pause_timeout - 3))


def test_a_reply_still_reading_does_not_finish() -> None:
    assert decide(moment(), CADENCE) == Step("wait", None)


def test_finishing_does_not_wait_for_a_save_the_final_save_makes_it() -> None:
    step = decide(moment(reader_done=True, delivered_len=9, saved_len=4), CADENCE)

    assert step.action == "finish"


# --- saving ---------------------------------------------------------------------------


def test_unsaved_text_is_saved_once_the_save_interval_has_passed() -> None:
    # One delta shown since the last save is enough.
    step = decide(
        moment(delivered_len=5, saved_len=4, last_save=NOW - CADENCE.save_interval), CADENCE
    )

    assert step.action == "save"


def test_unsaved_text_waits_until_its_save_is_due() -> None:
    step = decide(moment(delivered_len=6, saved_len=4, last_save=NOW - 0.5), CADENCE)

    assert pair(step) == ("wait", pytest.approx(CADENCE.save_interval - 0.5))


def test_nothing_unsaved_is_never_saved_however_long_ago_the_last_save() -> None:
    step = decide(moment(last_save=NOW - 10 * CADENCE.save_interval), CADENCE)

    assert step == Step("wait", None)


def test_a_wait_ends_at_whichever_comes_due_first_the_gap_or_the_save() -> None:
    gap_first = moment(pending=True, last_emit=NOW - 0.05, delivered_len=6, last_save=NOW - 1)
    save_first = replace(gap_first, last_save=NOW - CADENCE.save_interval + 0.01)

    assert pair(decide(gap_first, CADENCE)) == ("wait", pytest.approx(0.05))
    assert pair(decide(save_first, CADENCE)) == ("wait", pytest.approx(0.01))


def test_a_paused_reply_still_saves_what_it_showed() -> None:
    step = decide(
        moment(paused=True, paused_at=NOW - 1, delivered_len=6, last_save=NOW - 5), CADENCE
    )

    assert step.action == "save"


# --- pausing --------------------------------------------------------------------------


def test_a_pause_ends_the_reply_exactly_at_the_limit() -> None:
    step = decide(moment(paused=True, paused_at=NOW - CADENCE.pause_timeout), CADENCE)

    assert step.action == "pause_timeout"


def test_a_pause_just_short_of_the_limit_waits_for_the_rest_of_it() -> None:
    step = decide(moment(paused=True, paused_at=NOW - CADENCE.pause_timeout + 0.25), CADENCE)

    assert pair(step) == ("wait", pytest.approx(0.25))


def test_the_pause_limit_wins_over_everything_else_that_is_due() -> None:
    step = decide(
        moment(
            paused=True,
            paused_at=NOW - CADENCE.pause_timeout - 1,
            pending=True,
            reader_done=True,
            delivered_len=9,
            last_save=NOW - 100,
        ),
        CADENCE,
    )

    assert step.action == "pause_timeout"


def test_a_wait_while_paused_is_bounded_by_the_pause_limit_even_with_a_save_later() -> None:
    # The save comes due in 1.5 s, the pause limit in 0.5 s: the runner must wake for
    # the limit.
    step = decide(
        moment(
            paused=True,
            paused_at=NOW - CADENCE.pause_timeout + 0.5,
            delivered_len=6,
            last_save=NOW - CADENCE.save_interval + 1.5,
        ),
        CADENCE,
    )

    assert pair(step) == ("wait", pytest.approx(0.5))


def test_an_unpaused_reply_is_never_ended_by_an_old_pause_time() -> None:
    step = decide(moment(paused=False, paused_at=NOW - 10 * CADENCE.pause_timeout), CADENCE)

    assert step == Step("wait", None)


# --- the finished reply's figures -----------------------------------------------------


def test_metrics_leave_the_paused_time_out_of_the_streaming_time() -> None:
    metrics = reply_metrics(
        ended=103.5,
        started_at=100.0,
        first_token_at=100.25,
        paused_total=1.5,
        completion_tokens=40,
        pieces=12,
    )

    assert metrics == {
        "ttft_ms": 250.0,
        "duration_ms": 2000.0,  # 3.5 s from start to end, less 1.5 s paused
        "tokens": 40,
        "tokens_per_second": 20.0,
        "paused_ms": 1500.0,
    }


def test_metrics_count_the_pieces_when_the_model_reports_no_usage() -> None:
    metrics = reply_metrics(
        ended=12.0,
        started_at=10.0,
        first_token_at=10.5,
        paused_total=0.0,
        completion_tokens=None,
        pieces=7,
    )

    assert metrics["tokens"] == 7
    assert metrics["tokens_per_second"] == 3.5


def test_metrics_take_a_reported_zero_over_the_pieces() -> None:
    metrics = reply_metrics(
        ended=12.0,
        started_at=10.0,
        first_token_at=10.5,
        paused_total=0.0,
        completion_tokens=0,
        pieces=7,
    )

    assert metrics["tokens"] == 0
    assert metrics["tokens_per_second"] == 0.0


def test_metrics_have_no_rate_when_nothing_was_streamed() -> None:
    # Paused from its start to its stop: no streaming time at all.
    metrics = reply_metrics(
        ended=20.0,
        started_at=10.0,
        first_token_at=None,
        paused_total=10.0,
        completion_tokens=None,
        pieces=0,
    )

    assert metrics["duration_ms"] == 0.0
    assert metrics["tokens_per_second"] is None
    assert metrics["ttft_ms"] is None
    assert metrics["paused_ms"] == 10000.0


def test_metrics_of_a_reply_stopped_before_it_started_are_empty() -> None:
    metrics = reply_metrics(
        ended=20.0,
        started_at=None,
        first_token_at=None,
        paused_total=0.0,
        completion_tokens=None,
        pieces=0,
    )

    assert metrics == {
        "ttft_ms": None,
        "duration_ms": None,
        "tokens": 0,
        "tokens_per_second": None,
        "paused_ms": 0.0,
    }


def test_metrics_are_rounded_as_the_protocol_shows_them() -> None:
    metrics = reply_metrics(
        ended=1.0 + 2 / 3,
        started_at=1.0,
        first_token_at=1.0 + 1 / 3,
        paused_total=0.0,
        completion_tokens=5,
        pieces=5,
    )

    assert metrics["ttft_ms"] == 333.3
    assert metrics["duration_ms"] == 666.7
    assert metrics["tokens_per_second"] == 7.5


# --- properties -----------------------------------------------------------------------

# Whole seconds (as floats) keep the arithmetic exact, so "it wakes exactly when something
# comes due" can be checked with ==.
TIMES = st.integers(min_value=0, max_value=10_000).map(float)
DURATIONS = st.integers(min_value=1, max_value=1_000).map(float)


@st.composite
def cadences(draw: st.DrawFn) -> Cadence:
    return Cadence(
        gap=draw(DURATIONS),
        max_wait=draw(DURATIONS),
        save_interval=draw(DURATIONS),
        pause_timeout=draw(DURATIONS),
    )


@st.composite
def moments(draw: st.DrawFn) -> Moment:
    now = draw(TIMES)
    paused = draw(st.booleans())
    saved = draw(st.integers(0, 50))
    return Moment(
        now=now,
        paused=paused,
        # The runner records when a pause began; a pause it has not timed yet (None)
        # and a stale time on an unpaused reply are drawn too.
        paused_at=draw(st.none() | st.floats(max_value=now, min_value=now - 20_000)),
        pending=draw(st.booleans()),
        reader_done=draw(st.booleans()),
        last_emit=draw(st.floats(max_value=now, min_value=now - 20_000)),
        delivered_len=saved + draw(st.integers(0, 5)),
        saved_len=saved,
        last_save=draw(st.floats(max_value=now, min_value=now - 20_000)),
    )


@settings(max_examples=300, deadline=None)
@given(m=moments(), c=cadences())
def test_every_moment_gets_an_action_or_a_wait_that_is_never_negative(
    m: Moment, c: Cadence
) -> None:
    step = decide(m, c)

    assert step.action in ("pause_timeout", "deliver", "finish", "save", "wait")
    if step.action == "wait":
        assert step.seconds is None or step.seconds >= 0
    if m.paused:
        assert step.action not in ("deliver", "finish")
    if m.paused and m.paused_at is not None and step.action == "wait":
        assert step.seconds is not None
        assert step.seconds <= max(m.paused_at + c.pause_timeout - m.now, 0.0)


@st.composite
def whole_second_moments(draw: st.DrawFn) -> Moment:
    now = draw(TIMES)
    back = st.integers(0, 2_000).map(float)
    saved = draw(st.integers(0, 50))
    return Moment(
        now=now,
        paused=draw(st.booleans()),
        paused_at=draw(st.none() | back.map(lambda b: now - b)),
        pending=draw(st.booleans()),
        reader_done=draw(st.booleans()),
        last_emit=now - draw(back),
        delivered_len=saved + draw(st.integers(0, 5)),
        saved_len=saved,
        last_save=now - draw(back),
    )


@settings(max_examples=300, deadline=None)
@given(m=whole_second_moments(), c=cadences())
def test_a_wait_ends_exactly_when_something_comes_due(m: Moment, c: Cadence) -> None:
    """The runner neither oversleeps (text held back, a save or a pause limit missed) nor
    wakes for nothing: after the wait, with nothing else changed, there is work."""
    step = decide(m, c)
    if step.action != "wait":
        return
    if step.seconds is None:
        # Nothing comes due by time alone: only a wake-up (text, a control) changes it.
        assert decide(replace(m, now=m.now + 1_000_000.0), c) == Step("wait", None)
        return
    assert step.seconds > 0
    assert decide(replace(m, now=m.now + step.seconds), c).action != "wait"

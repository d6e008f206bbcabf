"""Every metric Parley exposes at ``/metrics`` (Prometheus text format), in one place.

Per process, not prometheus-client's multiprocess mode: each daphne is one process with
one event loop, so its own registry is exact, and Prometheus scrapes every daphne
directly (docs/architecture.md "Metrics"). A restart resets the process's counters, which
Prometheus sees in ``process_start_time_seconds`` and ``rate()`` handles as a reset.

The callers instrument with one call each (``event_emitted("delta")``); the objects stay
here. What it costs (issue 20: nothing measurable per token):

- nothing per member: the frames written and the WebSocket cuts are the fast path's own
  plain-int counters (core/fastpath.py ``COUNTERS``), read only when scraped
  (``_FastPathCollector``); the connection gauges are counted from the room registry when
  scraped (``set_live_view``), not kept up to date per handshake;
- per event, per process: one counter increment by type, one histogram observation each
  for the fan-out and the channel-layer lag; per reply, a handful.

``PARLEY_METRICS=off`` turns it all off (``configure``, at start-up): the calls become
no-ops and /metrics a 404; ``make bench`` runs the 200-member fan-out both ways side by
side (bench/run.py ``--metrics-cost``) to show the difference is within the run's spread.

Labels are bounded: event types, transports, paths and states are the contract's own
finite sets; models and assistants pass through an allow-list setting
(``PARLEY_METRICS_MODELS``, ``PARLEY_METRICS_ASSISTANTS``), the rest are ``other``; a
stop reason that is not a short code is ``other``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from core.fastpath import COUNTERS

# --- buckets: each family's range is what an operator would alert on ---------------------

# A fan-out to a few hundred members takes well under a millisecond per member.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A model's first token: tens of milliseconds (a warm local model) to many seconds.
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
_RATE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_AUDIO_BUCKETS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)

# --- connections and rooms -----------------------------------------------------------------

CONNECTIONS = Gauge(
    "parley_connections",
    "Open room connections in this process, by transport.",
    ["transport"],
)
ROOMS = Gauge("parley_rooms_with_subscribers", "Rooms with a subscriber in this process.")
SUBSCRIPTIONS = Gauge("parley_subscriptions", "Room subscriptions in this process.")
USERS_ONLINE = Gauge("parley_users_online", "Distinct users with a subscription here.")
HANDSHAKES = Counter(
    "parley_handshakes",
    "Room handshakes by transport and outcome; a refusal carries its close code "
    "(WebSocket) or HTTP status (SSE).",
    ["transport", "outcome", "code"],
)

# --- delivery ------------------------------------------------------------------------------

EVENTS = Counter("parley_events_emitted", "Durable room events emitted, by type.", ["type"])
# SSE streams ended because the reader fell behind: a plain int, as the fast path's own.
_sse_cuts = [0]
FANOUT = Histogram(
    "parley_fanout_duration_seconds",
    "From a durable event's receipt to its last local write, per event.",
    buckets=_FAST_BUCKETS,
)
LAYER_LAG = Histogram(
    "parley_layer_lag_seconds",
    "From an event's publish on the channel layer to its receipt here (wall clock).",
    buckets=_FAST_BUCKETS,
)
REPLAYS = Counter(
    "parley_replays", "Catch-ups served, by source (recent, store, snapshot).", ["source"]
)

# --- replies -------------------------------------------------------------------------------

REPLIES_STARTED = Counter(
    "parley_replies_started", "Assistant replies started.", ["model", "assistant"]
)
REPLIES_ENDED = Counter(
    "parley_replies_ended",
    "Assistant replies ended, by terminal state and stop reason.",
    ["state", "reason", "model", "assistant"],
)
TTFT = Histogram(
    "parley_reply_ttft_seconds",
    "Time to the model's first token.",
    ["model"],
    buckets=_TTFT_BUCKETS,
)
DURATION = Histogram(
    "parley_reply_duration_seconds",
    "A reply's streaming time, pauses excluded.",
    ["model"],
    buckets=_DURATION_BUCKETS,
)
TOKENS_PER_SECOND = Histogram(
    "parley_reply_tokens_per_second", "A reply's output rate.", ["model"], buckets=_RATE_BUCKETS
)
TOKENS = Counter("parley_tokens", "Model tokens read and written.", ["direction", "model"])

# --- upstreams -----------------------------------------------------------------------------

UPSTREAM_REQUESTS = Counter(
    "parley_upstream_requests", "Requests to the model, TTS and STT engines.", ["service"]
)
UPSTREAM_ERRORS = Counter(
    "parley_upstream_errors", "Failed upstream requests, by error code.", ["service", "code"]
)
TTS_FIRST_BYTE = Histogram(
    "parley_tts_first_byte_seconds",
    "From a reply's speech starting to its first audio.",
    buckets=_TTFT_BUCKETS,
)
STT_DURATION = Histogram(
    "parley_stt_duration_seconds", "Time to transcribe one utterance.", buckets=_TTFT_BUCKETS
)
STT_AUDIO = Histogram(
    "parley_stt_audio_seconds", "Length of the utterances transcribed.", buckets=_AUDIO_BUCKETS
)

# --- the store -----------------------------------------------------------------------------

STORE_ERRORS = Counter(
    "parley_store_errors", "Event store (Redis) operations that failed.", ["operation"]
)
STORE_RETRIES = Counter("parley_store_retries", "Emits retried while the store was away.")
STORE_OUTAGES = Counter(
    "parley_store_outages", "Times the store went away (first failure after a success)."
)
STORE_UP = Gauge("parley_store_up", "1 unless the store's last operation here failed.")
STORE_UP.set(1)

# --- the fast path's own counters, read at scrape time -------------------------------------


class _FastPathCollector(Collector):
    """Frames written by path and WebSocket cuts: core/fastpath.py already counts them with
    one plain-int increment per member per frame, so they cost nothing more here."""

    def collect(self) -> Iterable[Metric]:
        frames = CounterMetricFamily(
            "parley_frames_written",
            "Frames written to members, by transport and path (prepared: encoded once and "
            "written straight to the socket; plain: through the server's own write).",
            labels=["transport", "path"],
        )
        c = COUNTERS
        frames.add_metric(["websocket", "prepared"], c.ws_prepared)
        frames.add_metric(["websocket", "plain"], c.ws_plain)
        frames.add_metric(["sse", "prepared"], c.sse_direct)
        frames.add_metric(["sse", "plain"], c.sse_buffered)
        yield frames
        cuts = CounterMetricFamily(
            "parley_slow_reader_cuts",
            "Connections cut because the reader fell too far behind (4408; SSE: ended).",
            labels=["transport"],
        )
        cuts.add_metric(["websocket"], c.ws_cut)
        cuts.add_metric(["sse"], _sse_cuts[0])
        yield cuts


REGISTRY.register(_FastPathCollector())

# --- the calls callers make ----------------------------------------------------------------

_REASON = re.compile(r"[a-z_]{1,32}")


def _bounded(value: str | None, allowed: Iterable[str], default: str) -> str:
    if not value:
        return default
    return value if value in allowed else "other"


def _settings(name: str) -> Any:
    from django.conf import settings

    return getattr(settings, name)


def model_label(model: str | None) -> str:
    return _bounded(model, _settings("PARLEY_METRICS_MODELS"), "default")


def assistant_label(handle: str | None) -> str:
    return _bounded(handle, _settings("PARLEY_METRICS_ASSISTANTS"), "default")


_events: dict[str, Any] = {}


def event_emitted(event_type: str) -> None:
    child = _events.get(event_type)
    if child is None:  # the contract's event types: a small fixed set
        child = _events[event_type] = EVENTS.labels(event_type)
    child.inc()


def handshake(transport: str, code: int | None = None) -> None:
    """A handshake's outcome: accepted (``code`` None) or refused with ``code``."""
    if code is None:
        HANDSHAKES.labels(transport, "accepted", "").inc()
    else:
        HANDSHAKES.labels(transport, "refused", str(code)).inc()


def sse_cut() -> None:
    _sse_cuts[0] += 1


def fanout_observe(started: float) -> None:
    """``started``: ``time.perf_counter()`` when the event was received."""
    FANOUT.observe(time.perf_counter() - started)


def published_at() -> float | None:
    """The wall-clock stamp a publish carries, for the receiver's ``layer_lag``."""
    return time.time()


def layer_lag(published: float | None) -> None:
    if published is not None:
        LAYER_LAG.observe(max(time.time() - published, 0.0))


def replayed(source: str) -> None:
    REPLAYS.labels(source).inc()


def reply_started(*, model: str | None, assistant: str | None = None) -> None:
    REPLIES_STARTED.labels(model_label(model), assistant_label(assistant)).inc()


def reply_ended(
    *,
    state: str,
    reason: str | None,
    model: str | None,
    metrics: Mapping[str, Any],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    error_code: str | None = None,
    assistant: str | None = None,
) -> None:
    """One reply's end: its state, stop reason and figures (``reply_metrics``), and the
    model request it made (``error_code`` when the model failed it)."""
    m = model_label(model)
    short = reason if reason and _REASON.fullmatch(reason) else ("" if not reason else "other")
    REPLIES_ENDED.labels(state, short, m, assistant_label(assistant)).inc()
    if metrics.get("ttft_ms") is not None:
        TTFT.labels(m).observe(metrics["ttft_ms"] / 1000)
    if metrics.get("duration_ms") is not None:
        DURATION.labels(m).observe(metrics["duration_ms"] / 1000)
    if metrics.get("tokens_per_second") is not None:
        TOKENS_PER_SECOND.labels(m).observe(metrics["tokens_per_second"])
    if prompt_tokens:
        TOKENS.labels("in", m).inc(prompt_tokens)
    out = completion_tokens if completion_tokens is not None else metrics.get("tokens")
    if out:
        TOKENS.labels("out", m).inc(out)
    if metrics.get("duration_ms") is not None:  # it ran (was not stopped while queued)
        upstream("model", error_code)


def upstream(service: str, error_code: str | None = None) -> None:
    """One request to ``service`` (model, tts, stt) done, failed with ``error_code``."""
    UPSTREAM_REQUESTS.labels(service).inc()
    if error_code is not None:
        code = error_code if _REASON.fullmatch(error_code) else "other"
        UPSTREAM_ERRORS.labels(service, code).inc()


def tts_first_byte(seconds: float) -> None:
    TTS_FIRST_BYTE.observe(seconds)


def stt_done(*, seconds: float, audio_seconds: float, error_code: str | None = None) -> None:
    upstream("stt", error_code)
    if error_code is None:
        STT_DURATION.observe(seconds)
        STT_AUDIO.observe(audio_seconds)


_store = {"up": True}


def store_error(operation: str) -> None:
    """An event store operation failed (the store is unreachable)."""
    STORE_ERRORS.labels(operation).inc()
    if _store["up"]:
        _store["up"] = False
        STORE_OUTAGES.inc()
        STORE_UP.set(0)


def store_retry() -> None:
    STORE_RETRIES.inc()


def store_ok() -> None:
    """An operation succeeded: one dict read unless an outage just ended."""
    if not _store["up"]:
        _store["up"] = True
        STORE_UP.set(1)


# --- the switch (PARLEY_METRICS) -----------------------------------------------------------

# Every call above that a caller makes on a hot or warm path. Callers look them up on the
# module (``metrics.event_emitted(...)``) at each call, so rebinding the names here turns
# them off everywhere.
_CALLS = (
    "event_emitted",
    "handshake",
    "sse_cut",
    "fanout_observe",
    "layer_lag",
    "replayed",
    "reply_started",
    "reply_ended",
    "upstream",
    "tts_first_byte",
    "stt_done",
    "store_error",
    "store_retry",
    "store_ok",
)
_on: dict[str, Callable[..., Any]] = {}


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


def configure(*, enabled: bool) -> None:
    """``PARLEY_METRICS``, at start-up (config/asgi.py): off makes every instrumentation
    call a no-op, and the publish stamp None (the receivers then take no lag). The fast
    path's own plain-int counters (core/fastpath.py) still count: they are its debugging
    counters too, and cost one integer increment per write. /metrics answers 404
    (config/metrics.py)."""
    module = globals()
    if not _on:
        _on.update({name: module[name] for name in (*_CALLS, "published_at")})
    for name in _CALLS:
        module[name] = _on[name] if enabled else _nothing
    module["published_at"] = _on["published_at"] if enabled else _nothing


# --- what is counted when scraped ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveView:
    """This process's room registry as it stands, counted when scraped."""

    websocket: int = 0
    sse: int = 0
    rooms: int = 0
    users: int = 0


_live_view: list[Callable[[], LiveView]] = []


def set_live_view(source: Callable[[], LiveView]) -> None:
    """Where the connection gauges come from (chat registers its room registry)."""
    _live_view[:] = [source]


def refresh_live_view() -> None:
    """Set the connection gauges, once per scrape."""
    view = _live_view[0]() if _live_view else LiveView()
    CONNECTIONS.labels("websocket").set(view.websocket)
    CONNECTIONS.labels("sse").set(view.sse)
    ROOMS.set(view.rooms)
    SUBSCRIPTIONS.set(view.websocket + view.sse)
    USERS_ONLINE.set(view.users)

"""The OpenTelemetry side of a turn's trace (core/tracing.py): imported only when
``PARLEY_TRACING`` is on, so only then is opentelemetry imported at all.

The tracer provider is the process's global one if something already configured an SDK
provider (``opentelemetry-instrument``, say); otherwise Parley makes one, once, named by
``OTEL_SERVICE_NAME`` (default ``parley``) with the exporters that ``OTEL_TRACES_EXPORTER``
names (default ``otlp``, the SDK's own default), found the standard way: by the
``opentelemetry_traces_exporter`` entry points of whatever exporter packages are installed
(``opentelemetry-exporter-otlp-proto-http`` gives ``otlp``; the SDK itself ``console``),
each configured by its own ``OTEL_EXPORTER_*`` variables, behind a batch processor.
``PARLEY_TRACING_EXPORTER=memory`` (tests) keeps the spans in the SDK's
``InMemorySpanExporter`` instead, read through the process's debug dump.
"""

from __future__ import annotations

import os
import threading
from importlib.metadata import entry_points
from typing import Any

from django.conf import settings
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

EXPORTER_GROUP = "opentelemetry_traces_exporter"

_lock = threading.Lock()
_tracer: list[trace.Tracer] = []
_memory: list[InMemorySpanExporter] = []


def exporter_names() -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names ("none": none)."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    return [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]


def missing_exporters() -> list[str]:
    """The named exporters no installed package provides (the start-up check's)."""
    if settings.PARLEY_TRACING_EXPORTER == "memory":
        return []
    return [n for n in exporter_names() if not entry_points(group=EXPORTER_GROUP, name=n)]


def _exporters() -> list[SpanExporter]:
    out = []
    for name in exporter_names():
        for point in entry_points(group=EXPORTER_GROUP, name=name):
            out.append(point.load()())
            break
    return out


def _make_tracer() -> trace.Tracer:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        service = os.environ.get("OTEL_SERVICE_NAME", "parley")
        own = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        if settings.PARLEY_TRACING_EXPORTER == "memory":
            memory = InMemorySpanExporter()
            _memory.append(memory)
            own.add_span_processor(SimpleSpanProcessor(memory))
        else:
            for exporter in _exporters():
                own.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(own)
        provider = own
    return provider.get_tracer("parley")


def tracer() -> trace.Tracer:
    if not _tracer:
        with _lock:
            if not _tracer:
                _tracer.append(_make_tracer())
    return _tracer[0]


class Turn:
    """One AI turn's spans. Each method is called at most once per turn, by the reply's
    run (chat/replies/run.py); ``end`` ends whatever is still open, and a second ``end``
    does nothing."""

    def __init__(self, root: Span, queued: Span) -> None:
        self.root = root
        self.queued: Span | None = queued
        self.model: Span | None = None
        self._context: Context = trace.set_span_in_context(root)
        self.ended = False

    @classmethod
    def begin(
        cls, *, sent_ns: int, room_id: int, message_id: int, assistant: str, model: str
    ) -> Turn:
        t = tracer()
        root = t.start_span(
            "parley.turn",
            kind=SpanKind.INTERNAL,
            start_time=sent_ns,
            attributes={
                "parley.room.id": room_id,
                "parley.message.id": message_id,
                "parley.assistant": assistant,
                "gen_ai.request.model": model,
            },
        )
        queued = t.start_span(
            "parley.turn.queued", context=trace.set_span_in_context(root), start_time=sent_ns
        )
        return cls(root, queued)

    def started(self) -> None:
        """The reply's turn in the room's line came: it runs now."""
        if self.queued is not None:
            self.queued.end()
            self.queued = None

    def model_request(self, model: str) -> None:
        """The model request goes out."""
        self.started()
        self.model = tracer().start_span(
            "parley.model",
            context=self._context,
            kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": model},
        )

    def first_token(self) -> None:
        if self.model is not None:
            self.model.add_event("first_token")

    def model_done(self, *, error_code: str | None, tokens: int | None) -> None:
        """The model request ended (its last token read, failed, or closed by a stop)."""
        span, self.model = self.model, None
        if span is None:
            return
        if tokens:
            span.set_attribute("gen_ai.usage.output_tokens", tokens)
        if error_code is not None:
            span.set_status(Status(StatusCode.ERROR, error_code))
        span.end()

    def end(
        self,
        *,
        state: str,
        reason: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        """The reply ended in ``state`` (its terminal event is out)."""
        if self.ended:
            return
        self.ended = True
        self.started()
        self.model_done(error_code=None, tokens=completion_tokens)
        attributes: dict[str, Any] = {"parley.reply.state": state}
        if reason:
            attributes["parley.reply.stop_reason"] = reason
        if prompt_tokens:
            attributes["gen_ai.usage.input_tokens"] = prompt_tokens
        if completion_tokens:
            attributes["gen_ai.usage.output_tokens"] = completion_tokens
        self.root.set_attributes(attributes)
        if state == "failed":
            self.root.set_status(Status(StatusCode.ERROR, reason or state))
        self.root.end()


def _span_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "ns": e.timestamp} for e in span.events],
        "status": span.status.status_code.name,
    }


def memory_spans() -> list[dict[str, Any]]:
    """The finished spans the in-memory exporter holds (``PARLEY_TRACING_EXPORTER=memory``)."""
    if not _memory:
        return []
    return [_span_dict(s) for s in _memory[0].get_finished_spans()]

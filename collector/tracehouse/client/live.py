"""Pending spans at start, and text chunks as span-linked log records.

OpenTelemetry SDKs export a span only when it ends, so a collector sees a
tool call only once it has returned. `LiveSpanProcessor` also exports, the
moment each span starts, a *pending span* in Logfire's format (a
zero-length child of the real span carrying `logfire.span_type =
"pending_span"` and the real span's parent in `logfire.pending_parent_id`);
tracehouse shows the step as started and replaces it with the real span
when that ends. `TextStream` sends output or reasoning as it is generated,
as OTLP log records linked to the current span, numbered in order.

Both send through the user's own OTLP exporters, batched with a short
delay (100 ms by default) so live views stay live without a request per
span.
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

# The formats the collector reads, from the one place they are defined.
from tracehouse.schema.rows import (
    CHUNK_CHANNEL_KEY,
    CHUNK_CHANNELS,
    CHUNK_EVENT,
    CHUNK_INDEX_KEY,
    PENDING_NO_PARENT,
    PENDING_PARENT_KEY,
    PENDING_SPAN_TYPE,
    PENDING_TYPE_KEY,
)


class LiveSpanProcessor(SpanProcessor):
    """A `BatchSpanProcessor` for `exporter` that also exports each span as it starts.

    Use it in place of `BatchSpanProcessor(exporter)`.
    """

    def __init__(self, exporter: SpanExporter, *, schedule_delay_millis: float = 100) -> None:
        self._batch = BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        context = span.get_span_context()
        if context is None or not context.trace_flags.sampled:
            return
        self._batch.on_end(pending_span(span))

    def on_end(self, span: ReadableSpan) -> None:
        self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


def pending_span(span: ReadableSpan) -> ReadableSpan:
    """The pending span announcing `span` as started (Logfire's format)."""
    real = span.get_span_context()
    assert real is not None
    parent = span.parent
    own = trace_api.SpanContext(
        trace_id=real.trace_id,
        span_id=_new_span_id(),
        is_remote=False,
        trace_flags=real.trace_flags,
        trace_state=real.trace_state,
    )
    start = span.start_time
    return ReadableSpan(
        name=span.name,
        context=own,
        parent=real,
        resource=span.resource,
        attributes={
            **(span.attributes or {}),
            PENDING_TYPE_KEY: PENDING_SPAN_TYPE,
            PENDING_PARENT_KEY: f"{parent.span_id:016x}" if parent else PENDING_NO_PARENT,
        },
        kind=span.kind,
        start_time=start,
        end_time=start,
        instrumentation_scope=span.instrumentation_scope,
    )


def _new_span_id() -> int:
    while True:
        span_id = secrets.randbits(64)
        if span_id:
            return span_id


class TextStream:
    """Streams text of the current span (its output or reasoning) as OTLP log records."""

    # Spans whose chunk numbering is remembered; older ones start again at 0,
    # which only matters for a span still streaming after 10,000 newer ones.
    _REMEMBERED = 10_000

    def __init__(
        self,
        exporter: LogRecordExporter,
        *,
        resource: Resource | None = None,
        schedule_delay_millis: float = 100,
    ) -> None:
        self._provider = LoggerProvider(resource=resource or Resource.create())
        self._provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter, schedule_delay_millis=schedule_delay_millis)
        )
        self._logger = self._provider.get_logger("tracehouse.client")
        self._counters: OrderedDict[tuple[int, int], Iterator[int]] = OrderedDict()
        self._lock = threading.Lock()

    def write(self, text: str, channel: str = "output", span: trace_api.Span | None = None) -> None:
        """Send a chunk of `span`'s text (default: the current span's)."""
        if channel not in CHUNK_CHANNELS:
            raise ValueError(f"channel must be one of {CHUNK_CHANNELS}, not {channel!r}")
        target = span or trace_api.get_current_span()
        context = target.get_span_context()
        if not context.is_valid:
            return  # no span to attach the text to
        self._logger.emit(
            body=text,
            context=trace_api.set_span_in_context(target),
            event_name=CHUNK_EVENT,
            attributes={
                CHUNK_CHANNEL_KEY: channel,
                CHUNK_INDEX_KEY: self._next_index(context.trace_id, context.span_id),
            },
        )

    def _next_index(self, trace_id: int, span_id: int) -> int:
        key = (trace_id, span_id)
        with self._lock:
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = itertools.count()
                if len(self._counters) > self._REMEMBERED:
                    self._counters.popitem(last=False)
            return next(counter)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._provider.shutdown()

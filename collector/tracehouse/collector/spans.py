"""Protobuf requests → span rows, column by column, losslessly, with their mapping.

The hot path of ingest: every span passes through `span_rows` once. It
builds the columns of `tracehouse.schema.rows` directly (no object per span),
hands the decoded span to the mapping for its step columns, and checks each
span's ids, leaving out, and counting, spans OTLP says a receiver must not
accept.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from tracehouse.collector.batcher import Rows
from tracehouse.collector.mapping import Pricer, SpanFacts, map_span, pending_ids
from tracehouse.schema.rows import SPAN_KINDS, STATUS_CODES, WRITTEN_SPAN_COLUMNS, ValueType

INT64_MAX = 2**63 - 1
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)


@dataclass(frozen=True, slots=True)
class Mapping:
    """What the mapping needs besides the spans."""

    price: Pricer
    max_value_bytes: int
    max_attributes: int = 1024  # per span, event or link
    max_events: int = 1024  # per span
    max_links: int = 128  # per span
    received_ns: int = 0  # when the request arrived: a clock far ahead of it is flagged


# What the collector had to change of a span as sent, or doubts about it:
# stored with the span (`Warnings`) and shown with its step.
ATTRIBUTES_DROPPED = "attributes_dropped"
ATTRIBUTE_CUT = "attribute_cut"
EVENTS_DROPPED = "events_dropped"
LINKS_DROPPED = "links_dropped"
END_BEFORE_START = "end_before_start"
NO_START_TIME = "no_start_time"
CLOCK_AHEAD = "clock_ahead"
_CLOCK_SLACK_NS = 3_600 * 1_000_000_000


def span_rows(
    request: otlp_trace.ExportTraceServiceRequest, project_id: str, mapping: Mapping
) -> Rows:
    """Every valid span of the request as a row of `project_id`."""
    records: list[tuple[Any, ...]] = []
    rejected = 0
    error = ""
    for resource_spans in request.resource_spans:
        resource_types: dict[str, str] = {}
        resource = attributes_of(resource_spans.resource.attributes, "r", resource_types)
        service = resource.get("service.name", "")
        resource_url = resource_spans.schema_url
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            scope_types = dict(resource_types)
            scope_attributes = attributes_of(scope.attributes, "c", scope_types)
            context = (service, resource, resource_url, scope.name, scope.version,
                       scope_attributes, scope_spans.schema_url)  # fmt: skip
            for span in scope_spans.spans:
                problem = _id_problem(span)
                if problem:
                    rejected += 1
                    error = error or problem
                    continue
                types = dict(scope_types)
                records.append(_span_row(project_id, span, len(records), context, types, mapping))
    return Rows.of(records, len(WRITTEN_SPAN_COLUMNS), rejected, error)


def _id_problem(span: otlp.Span) -> str:
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return f"span {span.name!r}: trace_id must be 16 bytes and not all zero"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return f"span {span.name!r}: span_id must be 8 bytes and not all zero"
    if len(span.parent_span_id) not in (0, 8):
        return f"span {span.name!r}: parent_span_id must be empty or 8 bytes"
    return ""


def _span_row(
    project_id: str,
    span: otlp.Span,
    index: int,
    context: tuple[Any, ...],
    types: dict[str, str],
    mapping: Mapping,
) -> tuple[Any, ...]:
    service, resource, resource_url, scope_name, scope_version, scope_attributes, scope_url = (
        context
    )
    warnings: list[str] = []
    start = min(span.start_time_unix_nano, INT64_MAX)
    end = min(span.end_time_unix_nano, INT64_MAX)
    _check_clock(start, end, mapping.received_ns, warnings)
    span_pairs = _capped(span.attributes, mapping.max_attributes, ATTRIBUTES_DROPPED, warnings)
    attributes = attributes_of(span_pairs, "s", types)
    events = _capped(span.events, mapping.max_events, EVENTS_DROPPED, warnings)
    event_times, event_names, event_attributes = [], [], []
    for i, event in enumerate(events):
        event_times.append(min(event.time_unix_nano, INT64_MAX))
        event_names.append(event.name)
        pairs = _capped(event.attributes, mapping.max_attributes, ATTRIBUTES_DROPPED, warnings)
        event_attributes.append(
            _cut(attributes_of(pairs, f"e{i}", types), mapping.max_value_bytes, warnings)
        )
    links = [link for link in span.links if _link_ok(link)]
    if len(links) < len(span.links):
        warnings.append(LINKS_DROPPED)
    links = list(_capped(links, mapping.max_links, LINKS_DROPPED, warnings))
    link_traces, link_spans, link_states, link_attributes = [], [], [], []
    for i, link in enumerate(links):
        link_traces.append(link.trace_id.hex())
        link_spans.append(link.span_id.hex())
        link_states.append(link.trace_state)
        pairs = _capped(link.attributes, mapping.max_attributes, ATTRIBUTES_DROPPED, warnings)
        link_attributes.append(attributes_of(pairs, f"l{i}", types))
    status = _name(STATUS_CODES, span.status.code)
    # An all-zero parent id is no parent (OTLP calls it invalid).
    parent_id = "" if span.parent_span_id == _ZERO_SPAN else span.parent_span_id.hex()
    span_id = span.span_id.hex()
    announced = pending_ids(attributes, parent_id)
    if announced:
        span_id, parent_id = announced
    facts = SpanFacts(
        span.name, parent_id, status, span.status.message, attributes,
        list(zip(event_names, event_attributes, strict=True)), resource,
    )  # fmt: skip
    step = map_span(facts, mapping.price, mapping.max_value_bytes, pending=bool(announced))
    # Cut after the mapping, which read them whole (and kept their sizes).
    attributes = _cut(attributes, mapping.max_value_bytes, warnings)
    return (
        project_id, start, span.trace_id.hex(), span_id, parent_id,
        span.trace_state, span.name, _name(SPAN_KINDS, span.kind), service, resource,
        resource_url, scope_name, scope_version, scope_attributes, scope_url, attributes, types,
        max(end - start, 0), status, span.status.message, span.flags,
        _dropped(span.dropped_attributes_count, len(span.attributes) - len(span_pairs)),
        _dropped(span.dropped_events_count, len(span.events) - len(events)),
        _dropped(span.dropped_links_count, len(span.links) - len(links)), index, warnings,
        event_times, event_names, event_attributes,
        link_traces, link_spans, link_states, link_attributes, *step,
    )  # fmt: skip


_UINT32_MAX = 2**32 - 1


def _dropped(by_sender: int, by_us: int) -> int:
    return min(by_sender + by_us, _UINT32_MAX)


def _link_ok(link: otlp.Span.Link) -> bool:
    """A link names a whole span: 16- and 8-byte ids (a bad one is dropped, marked)."""
    return len(link.trace_id) == 16 and len(link.span_id) == 8


def _check_clock(start: int, end: int, received_ns: int, warnings: list[str]) -> None:
    if end < start:
        warnings.append(END_BEFORE_START)
    if start == 0:
        warnings.append(NO_START_TIME)
    elif received_ns and start > received_ns + _CLOCK_SLACK_NS:
        warnings.append(CLOCK_AHEAD)


T = TypeVar("T")


def _capped(items: Sequence[T], limit: int, warning: str, warnings: list[str]) -> Sequence[T]:
    """At most `limit` items; more are dropped (and counted as dropped) with a warning."""
    if len(items) <= limit:
        return items
    if warning not in warnings:
        warnings.append(warning)
    return items[:limit]


def _cut(attributes: dict[str, str], limit: int, warnings: list[str]) -> dict[str, str]:
    """Values over `limit` characters cut, with a marker (the same map if none is)."""
    if max(map(len, attributes.values()), default=0) <= limit:
        return attributes
    if ATTRIBUTE_CUT not in warnings:
        warnings.append(ATTRIBUTE_CUT)
    marker = "…[cut by tracehouse: {} characters in all]"
    return {
        key: value if len(value) <= limit else value[:limit] + marker.format(len(value))
        for key, value in attributes.items()
    }


def _name(names: tuple[str, ...], number: int) -> str:
    return names[number] if 0 <= number < len(names) else names[0]


def attribute_text(value: otlp_common.AnyValue) -> tuple[str, str]:
    """A value as stored: its text, and its type tag ("" for a string)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value, ""
    return _ENCODERS.get(which, _absent)(value)


def attributes_of(
    pairs: Sequence[otlp_common.KeyValue], scope: str, types: dict[str, str]
) -> dict[str, str]:
    """An attribute list as text values; types of non-strings go into `types`."""
    out: dict[str, str] = {}
    for pair in pairs:
        value = pair.value
        which = value.WhichOneof("value")
        if which == "string_value":
            out[pair.key] = value.string_value
            continue
        text, tag = _ENCODERS.get(which, _absent)(value)
        out[pair.key] = text
        types[f"{scope}.{pair.key}"] = tag
    if len(out) < len(pairs):
        # A key sent twice (OTLP says not to): the last value wins, with its
        # own type, not the type of a value it replaced.
        for pair in pairs:
            which = pair.value.WhichOneof("value")
            if which != "string_value":
                types[f"{scope}.{pair.key}"] = _ENCODERS.get(which, _absent)(pair.value)[1]
            else:
                types.pop(f"{scope}.{pair.key}", None)
    return out


class _NotPlainJson(Exception):
    """A value plain JSON cannot carry exactly (bytes, NaN, infinities)."""


def _plain(value: otlp_common.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value" and math.isfinite(value.double_value):
        return value.double_value
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if which is None:
        return None
    raise _NotPlainJson


def _complex(value: otlp_common.AnyValue, tag: ValueType) -> tuple[str, str]:
    try:
        return orjson.dumps(_plain(value)).decode(), tag
    except _NotPlainJson:
        return orjson.dumps(json_format.MessageToDict(value)).decode(), ValueType.ANY


def _absent(value: otlp_common.AnyValue) -> tuple[str, str]:
    # No value, or one only profiles use (`string_value_strindex`): absent.
    return "", ValueType.EMPTY


_ENCODERS: dict[str | None, Callable[[otlp_common.AnyValue], tuple[str, str]]] = {
    "bool_value": lambda v: ("true" if v.bool_value else "false", ValueType.BOOL),
    "int_value": lambda v: (str(v.int_value), ValueType.INT),
    "double_value": lambda v: (repr(v.double_value), ValueType.DOUBLE),
    "bytes_value": lambda v: (base64.b64encode(v.bytes_value).decode(), ValueType.BYTES),
    "array_value": lambda v: _complex(v, ValueType.ARRAY),
    "kvlist_value": lambda v: _complex(v, ValueType.KVLIST),
    None: _absent,
}

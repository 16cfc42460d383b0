"""Hand-built OTLP spans for tests that need exact control of ids, times and attributes."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

import httpx
from clickhouse_connect.driver.client import Client
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from tracehouse.collector.batcher import Block, Rows
from tracehouse.collector.encode import SPAN_ENCODER
from tracehouse.collector.prepare import Format, Limits, decode_export
from tracehouse.collector.writer import span_writer
from tracehouse.query_api.assembly import RunHeader
from tracehouse.query_api.runs import RunTree, trace_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import migrate

BASE_NS = 1_790_000_000_000_000_000
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
M = TypeVar("M", bound=Message)
_ids = itertools.count(1)


def new_id(size: int) -> bytes:
    """A fresh id: deterministic, and unlike its neighbours from the first hex digit."""
    return hashlib.sha256(next(_ids).to_bytes(8, "big")).digest()[:size]


def set_value(target: otlp_common.AnyValue, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, list):
        target.array_value.SetInParent()
        for item in value:
            set_value(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        for key, item in value.items():
            pair = target.kvlist_value.values.add(key=key)
            set_value(pair.value, item)
    else:
        target.string_value = str(value)


def span(
    name: str,
    trace_id: bytes,
    span_id: bytes,
    parent_id: bytes = b"",
    *,
    start: int = 0,
    end: int = 1,
    attributes: dict[str, Any] | None = None,
    error: str | None = None,
    events: Iterable[tuple[str, dict[str, Any]]] = (),
    links: Iterable[tuple[bytes, bytes]] = (),
) -> otlp.Span:
    """A span; `start` and `end` are milliseconds after BASE_NS."""
    built = otlp.Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=name,
        start_time_unix_nano=BASE_NS + start * 1_000_000,
        end_time_unix_nano=BASE_NS + end * 1_000_000,
    )
    for key, value in (attributes or {}).items():
        set_value(built.attributes.add(key=key).value, value)
    for event_name, event_attributes in events:
        event = built.events.add(name=event_name, time_unix_nano=built.end_time_unix_nano)
        for key, value in event_attributes.items():
            set_value(event.attributes.add(key=key).value, value)
    for link_trace, link_span in links:
        built.links.add(trace_id=link_trace, span_id=link_span)
    if error is not None:
        built.status.code = otlp.Status.STATUS_CODE_ERROR
        built.status.message = error
    return built


def chat(tokens: tuple[int, int], model: str = "gpt-4o") -> dict[str, Any]:
    """The OTel GenAI attributes of an LLM call: its model and (input, output) tokens."""
    return {"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
            "gen_ai.provider.name": "openai", "gen_ai.usage.input_tokens": tokens[0],
            "gen_ai.usage.output_tokens": tokens[1]}  # fmt: skip


def request(
    spans: Iterable[otlp.Span], service: str = "svc"
) -> otlp_trace.ExportTraceServiceRequest:
    built = otlp_trace.ExportTraceServiceRequest()
    resource_spans = built.resource_spans.add()
    set_value(resource_spans.resource.attributes.add(key="service.name").value, service)
    resource_spans.scope_spans.add().spans.extend(spans)
    return built


LIMITS = Limits(max_decompressed_bytes=64 << 20, max_value_bytes=1 << 20)


def rows_of(spans: Iterable[otlp.Span], project: str = "default") -> Rows:
    """Span rows exactly as the collector makes them from an export of these spans."""
    body = request(spans).SerializeToString()
    return decode_export(body, Format.PROTOBUF, "", LIMITS, project)


def block_of(spans: Iterable[otlp.Span], project: str = "default") -> Block:
    """Those rows encoded for their insert, as the collector's workers hand them on."""
    return SPAN_ENCODER.encode(rows_of(spans, project))


def pending(real: otlp.Span) -> otlp.Span:
    """The pending span (Logfire's format) announcing `real` as started."""
    built = otlp.Span(
        trace_id=real.trace_id,
        span_id=new_id(8),
        parent_span_id=real.span_id,
        name=real.name,
        start_time_unix_nano=real.start_time_unix_nano,
        end_time_unix_nano=real.start_time_unix_nano,
    )
    built.attributes.extend(real.attributes)
    for key, value in (
        ("logfire.span_type", "pending_span"),
        ("logfire.pending_parent_id", (real.parent_span_id or bytes(8)).hex()),
    ):
        set_value(built.attributes.add(key=key).value, value)
    return built


class Runs:
    """Write spans the way the collector does; read runs the way the API does."""

    def __init__(self, client: Client) -> None:
        migrate(client, SINGLE_NODE, 0)
        self.writer = span_writer(client)
        self.store = Store(client)

    def send(self, *spans: otlp.Span) -> None:
        self.writer.write(block_of(spans))

    def tree(self, trace_id: bytes) -> RunTree:
        found = trace_tree(self.store, "default", trace_id.hex())
        assert found is not None
        return found

    def header(self, trace_id: bytes) -> RunHeader:
        return self.tree(trace_id).run


def rpc_status(response: httpx.Response) -> status_pb2.Status:
    """The `google.rpc.Status` of an OTLP/HTTP error answer, in the encoding it came in."""
    status = status_pb2.Status()
    if response.headers["content-type"] == PROTOBUF:
        status.ParseFromString(response.content)
    else:
        assert response.headers["content-type"] == JSON
        json_format.Parse(response.text, status)
    return status


def export_reply(response: httpx.Response, message: M) -> M:
    """An OTLP/HTTP success answer (`message`: an empty Export*ServiceResponse), decoded."""
    assert response.status_code == 200, response.content
    if response.headers["content-type"] == PROTOBUF:
        message.ParseFromString(response.content)
    else:
        json_format.Parse(response.text, message)
    return message

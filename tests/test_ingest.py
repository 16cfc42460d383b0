"""Spans sent by the real OpenTelemetry SDK exporters, and raw OTLP/JSON, stored losslessly."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from grpc import Compression as GrpcCompression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from conftest import RunningServer, read_spans

EVERY_TYPE: dict[str, Any] = {
    "text": "héllo ✓",
    "flag": True,
    "count": -42,
    "big": 2**62,
    "ratio": 3.25,
    "raw": b"\x00\xffbytes",
    "words": ["a", "b"],
    "numbers": [1, 2, 3],
    "ratios": [0.5, 1.0],
    "flags": [True, False],
}


def record_spans() -> Sequence[ReadableSpan]:
    """A small agent-like trace with every attribute type, an event, a link, an error."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "weather-svc", "service.version": "1.2.3"})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test.scope", "0.9")
    with tracer.start_as_current_span("invoke_agent weather", kind=SpanKind.INTERNAL) as root:
        root.set_attributes(EVERY_TYPE)
        root.add_event("gen_ai.user.message", {"content": "weather?", "index": 0})
        with tracer.start_as_current_span("chat fake-model", kind=SpanKind.CLIENT) as chat:
            chat.set_attribute("gen_ai.usage.input_tokens", 12)
        link = Link(chat.get_span_context(), {"link.kind": "follows", "weight": 0.5})
        with tracer.start_as_current_span("execute_tool get_weather", links=[link]) as tool:
            tool.set_status(Status(StatusCode.ERROR, "weather service down"))
    provider.shutdown()
    return memory.get_finished_spans()


def grpc_exporter(server: RunningServer, gzip_on: bool) -> SpanExporter:
    compression = GrpcCompression.Gzip if gzip_on else None
    return GrpcExporter(endpoint=server.grpc_endpoint, insecure=True, compression=compression)


def http_exporter(server: RunningServer, gzip_on: bool) -> SpanExporter:
    compression = HttpCompression.Gzip if gzip_on else HttpCompression.NoCompression
    return HttpExporter(endpoint=f"{server.http_base}/v1/traces", compression=compression)


EXPORTERS: dict[str, Callable[[RunningServer], SpanExporter]] = {
    "grpc": lambda s: grpc_exporter(s, False),
    "grpc-gzip": lambda s: grpc_exporter(s, True),
    "http-protobuf": lambda s: http_exporter(s, False),
    "http-protobuf-gzip": lambda s: http_exporter(s, True),
}


def plain(value: Any) -> Any:
    """SDK attribute values as they read back: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("transport", EXPORTERS)
def test_every_span_field_survives_a_real_exporter(
    transport: str, server: RunningServer, db: Client
) -> None:
    sent = record_spans()
    exporter = EXPORTERS[transport](server)
    assert exporter.export(sent) is SpanExportResult.SUCCESS
    exporter.shutdown()

    stored = read_spans(db)
    assert len(stored) == len(sent) == 3
    for span in sent:
        context = span.context
        assert context is not None
        row = stored[f"{context.span_id:016x}"]
        assert row["ProjectId"] == "default"
        assert row["TraceId"] == f"{context.trace_id:032x}"
        assert row["ParentSpanId"] == (f"{span.parent.span_id:016x}" if span.parent else "")
        assert row["SpanName"] == span.name
        assert row["SpanKind"] == span.kind.name.capitalize()
        assert span.start_time is not None
        assert span.end_time is not None
        assert row["start_ns"] == span.start_time
        assert row["Duration"] == span.end_time - span.start_time
        assert row["ServiceName"] == "weather-svc"
        assert row["resource"]["service.version"] == "1.2.3"
        assert row["ScopeName"] == "test.scope"
        assert row["ScopeVersion"] == "0.9"
        assert row["attributes"] == {k: plain(v) for k, v in (span.attributes or {}).items()}
        assert row["events"] == [
            (e.name, e.timestamp, {k: plain(v) for k, v in (e.attributes or {}).items()})
            for e in span.events
        ]
        assert row["links"] == [
            (
                f"{link.context.trace_id:032x}",
                f"{link.context.span_id:016x}",
                "",
                dict(link.attributes or {}),
            )
            for link in span.links
        ]
        assert (
            row["StatusCode"]
            == {"UNSET": "Unset", "OK": "Ok", "ERROR": "Error"}[span.status.status_code.name]
        )
        assert row["StatusMessage"] == (span.status.description or "")

    root = next(r for r in stored.values() if r["SpanName"] == "invoke_agent weather")
    assert root["attributes"] == EVERY_TYPE
    # Strings stay plain text, as the OTel ClickHouse exporter stores them.
    assert root["SpanAttributes"]["text"] == "héllo ✓"
    assert root["SpanAttributes"]["count"] == "-42"
    assert root["SpanAttributes"]["words"] == '["a","b"]'


# The example request of the OTLP specification (opentelemetry-proto,
# examples/trace.json): upper-case hex ids, 64-bit times as JSON numbers.
SPEC_EXAMPLE = b"""{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
    "scopeSpans": [{
      "scope": {"name": "my.library", "version": "1.0.0",
        "attributes": [{"key": "my.scope.attribute",
                        "value": {"stringValue": "some scope attribute"}}]},
      "spans": [{
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "parentSpanId": "EEE19B7EC3C1B173",
        "name": "I'm a server span",
        "startTimeUnixNano": 1544712660000000000,
        "endTimeUnixNano": 1544712661000000000,
        "kind": 2,
        "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}]
      }]
    }]
  }]
}"""


def post_json(server: RunningServer, body: bytes, gzip_on: bool = False) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if gzip_on:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return httpx.post(f"{server.http_base}/v1/traces", content=body, headers=headers)


@pytest.mark.parametrize("gzip_on", [False, True], ids=["plain", "gzip"])
def test_the_otlp_spec_json_example_is_stored(
    gzip_on: bool, server: RunningServer, db: Client
) -> None:
    response = post_json(server, SPEC_EXAMPLE, gzip_on)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    row = read_spans(db)["eee19b7ec3c1b174"]
    assert row["TraceId"] == "5b8efff798038103d269b633813fc60c"
    assert row["ParentSpanId"] == "eee19b7ec3c1b173"
    assert row["SpanName"] == "I'm a server span"
    assert row["SpanKind"] == "Server"
    assert row["start_ns"] == 1544712660000000000
    assert row["Duration"] == 1_000_000_000
    assert row["ServiceName"] == "my.service"
    assert row["ScopeName"] == "my.library"
    assert row["scope_attributes"] == {"my.scope.attribute": "some scope attribute"}
    assert row["attributes"] == {"my.span.attr": "some value"}


def json_span(span_id: str, **fields: Any) -> dict[str, Any]:
    return {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": span_id, "name": "s"} | fields


def test_json_carries_every_value_type_events_links_and_status(
    server: RunningServer, db: Client
) -> None:
    attributes = [
        {"key": "s", "value": {"stringValue": "text"}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "i_str", "value": {"intValue": "9007199254740993"}},
        {"key": "i_num", "value": {"intValue": 7}},
        {"key": "d", "value": {"doubleValue": 2.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "y", "value": {"bytesValue": "AAEC"}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 1}]}}},
        {
            "key": "kv",
            "value": {
                "kvlistValue": {
                    "values": [
                        {"key": "role", "value": {"stringValue": "user"}},
                        {"key": "parts", "value": {"arrayValue": {"values": [{"doubleValue": 1}]}}},
                    ]
                }
            },
        },
        {
            "key": "kv_bytes",
            "value": {
                "kvlistValue": {"values": [{"key": "blob", "value": {"bytesValue": "/w=="}}]}
            },
        },
        {"key": "empty", "value": {}},
    ]
    span = json_span(
        "b7ad6b7169203331",
        parentSpanId="",
        startTimeUnixNano="1700000000000000001",
        endTimeUnixNano=1700000000500000001,
        kind=3,
        attributes=attributes,
        events=[
            {
                "timeUnixNano": "1700000000100000000",
                "name": "exception",
                "attributes": [{"key": "exception.type", "value": {"stringValue": "ValueError"}}],
            }
        ],
        links=[
            {
                "traceId": "11111111111111111111111111111111",
                "spanId": "2222222222222222",
                "traceState": "k=v",
                "attributes": [{"key": "n", "value": {"intValue": "3"}}],
            }
        ],
        status={"code": 2, "message": "boom"},
        traceState="vendor=1",
        flags=257,
    )
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})

    assert post_json(server, body).status_code == 200

    row = read_spans(db)["b7ad6b7169203331"]
    values = row["attributes"]
    nan = values.pop("nan")
    assert nan != nan
    assert values == {
        "s": "text",
        "b": True,
        "i_str": 9007199254740993,
        "i_num": 7,
        "d": 2.5,
        "y": b"\x00\x01\x02",
        "a": ["x", 1],
        "kv": {"role": "user", "parts": [1.0]},
        "kv_bytes": {"blob": b"\xff"},
        "empty": None,
    }
    assert row["start_ns"] == 1700000000000000001
    assert row["Duration"] == 500_000_000
    assert row["SpanKind"] == "Client"
    assert row["events"] == [("exception", 1700000000100000000, {"exception.type": "ValueError"})]
    assert row["links"] == [("1" * 32, "2" * 16, "k=v", {"n": 3})]
    assert (row["StatusCode"], row["StatusMessage"]) == ("Error", "boom")
    assert row["TraceState"] == "vendor=1"
    assert row["Flags"] == 257


def test_json_accepts_snake_case_field_names(server: RunningServer, db: Client) -> None:
    body = orjson.dumps(
        {
            "resource_spans": [
                {
                    "scope_spans": [
                        {
                            "spans": [
                                {
                                    "trace_id": "0af7651916cd43dd8448eb211c80319c",
                                    "span_id": "00f067aa0ba902b7",
                                    "parent_span_id": "00f067aa0ba902b6",
                                    "name": "snake",
                                    "start_time_unix_nano": 1700000000000000000,
                                    "end_time_unix_nano": "1700000001000000000",
                                }
                            ]
                        }
                    ]
                }
            ]
        }
    )

    assert post_json(server, body).status_code == 200

    row = read_spans(db)["00f067aa0ba902b7"]
    assert (row["SpanName"], row["ParentSpanId"]) == ("snake", "00f067aa0ba902b6")
    assert row["Duration"] == 1_000_000_000


def test_protobuf_kvlist_and_nested_values_survive(server: RunningServer, db: Client) -> None:
    request = otlp_trace.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes(range(1, 17))
    span.span_id = bytes(range(1, 9))
    span.name = "nested"
    attribute = span.attributes.add()
    attribute.key = "gen_ai.input.messages"
    message = attribute.value.array_value.values.add().kvlist_value.values.add()
    message.key = "parts"
    message.value.array_value.values.add().bytes_value = b"\x01"
    response = httpx.post(
        f"{server.http_base}/v1/traces",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert otlp_trace.ExportTraceServiceResponse.FromString(response.content) == (
        otlp_trace.ExportTraceServiceResponse()
    )
    row = read_spans(db)["0102030405060708"]
    assert row["attributes"] == {"gen_ai.input.messages": [{"parts": [b"\x01"]}]}


def test_health_endpoints_answer(server: RunningServer) -> None:
    assert httpx.get(f"{server.http_base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.api_base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.api_base}/readyz").json() == {"status": "ready"}


def test_a_failed_write_is_a_retryable_answer_and_ingest_recovers(
    server: RunningServer, db: Client
) -> None:
    from tracehouse.schema.ddl import SINGLE_NODE
    from tracehouse.schema.migrations import migrate

    # A write ClickHouse refuses (here: the table is gone) is not acknowledged.
    db.command("DROP TABLE runs_mv")
    db.command("RENAME TABLE spans TO spans_away")
    response = post_json(server, SPEC_EXAMPLE)
    assert response.status_code == 503
    assert 1 <= int(response.headers["Retry-After"]) <= 5
    assert "insert" in response.json()["message"]
    exporter = GrpcExporter(endpoint=server.grpc_endpoint, insecure=True, timeout=2)
    assert exporter.export(record_spans()) is SpanExportResult.FAILURE
    exporter.shutdown()

    db.command("RENAME TABLE spans_away TO spans")
    db.command("DELETE FROM tracehouse_migrations WHERE version = 2")
    migrate(db, SINGLE_NODE, 0)
    assert post_json(server, SPEC_EXAMPLE).status_code == 200
    assert "eee19b7ec3c1b174" in read_spans(db)

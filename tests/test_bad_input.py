"""Hostile and malformed OTLP against a real server: the documented answer, then still serving.

Every case sends one bad request to a server running in this process and
checks the answer the OTLP specification and the receivers promise: 400 /
INVALID_ARGUMENT with a readable reason for bad data, 413 for a body over
the limit, 415 for a media type or encoding we do not speak, and
`partial_success` for spans left out of an otherwise good export. Then a
valid export must be answered and its span be readable from `spans`, so one
bad client can never take the collector away from the good ones.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

# Aliased: a module-level name starting with `test_` would be collected as a test.
from builders import JSON, PROTOBUF, export_reply, rpc_status
from conftest import RunningServer
from conftest import server_settings as settings_for

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{TRACE_SERVICE}/Export"
MIB = 1024 * 1024
SMALL_LIMIT = 4096
START_NS = 1_700_000_000_123_456_789  # not a float64: shows ints travel exactly
TIMEOUT = 30.0

_ids = itertools.count(1)


# Requests -------------------------------------------------------------------


def _reply(response: httpx.Response) -> otlp_trace.ExportTraceServiceResponse:
    return export_reply(response, otlp_trace.ExportTraceServiceResponse())


def _span(name: str, *, trace_id: bytes | None = None, padding: int = 0) -> otlp.Span:
    """A valid span with ids of its own, unless `trace_id` says otherwise."""
    n = next(_ids)
    span = otlp.Span(
        trace_id=n.to_bytes(16, "big") if trace_id is None else trace_id,
        span_id=n.to_bytes(8, "big"),
        name=name,
        kind=otlp.Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=START_NS,
        end_time_unix_nano=START_NS + 1_000,
    )
    if padding:
        value = otlp_common.AnyValue(string_value="x" * padding)
        span.attributes.append(otlp_common.KeyValue(key="padding", value=value))
    return span


def _request(*spans: otlp.Span) -> otlp_trace.ExportTraceServiceRequest:
    request = otlp_trace.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        otlp_common.KeyValue(key="service.name", value=otlp_common.AnyValue(string_value="bad"))
    )
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


def _json_span(name: str, /, **fields: Any) -> dict[str, Any]:
    """A valid OTLP/JSON span (hex ids), with `fields` added or replacing its own."""
    n = next(_ids)
    span = {
        "traceId": n.to_bytes(16, "big").hex(),
        "spanId": n.to_bytes(8, "big").hex(),
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(START_NS + 1_000),
    }
    return span | fields


def _json_request(*spans: dict[str, Any]) -> bytes:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "bad"}}]}
    document = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": list(spans)}]}]}
    return orjson.dumps(document)


def _gzip_bomb(size: int) -> bytes:
    """`size` bytes of zeros, gzip-compressed a megabyte at a time (small on the wire)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    parts = [deflater.compress(zeros) for _ in range(size // MIB)]
    return b"".join([*parts, deflater.flush()])


def _chunks(body: bytes, size: int = 1024) -> Iterator[bytes]:
    """The body as an iterator, which httpx sends chunked, without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


# Talking to the server -------------------------------------------------------


def _http(server: RunningServer) -> httpx.Client:
    # A new connection per request: the server may close one after an error
    # answer, and "still serving" means serving a client that comes next.
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=server.http_base, timeout=TIMEOUT, limits=limits)


def _post(
    server: RunningServer,
    body: bytes | Iterator[bytes],
    content_type: str | None,
    *,
    encoding: str | None = None,
) -> httpx.Response:
    given = {"Content-Type": content_type, "Content-Encoding": encoding}
    headers = {name: value for name, value in given.items() if value is not None}
    with _http(server) as client:
        return client.post("/v1/traces", content=body, headers=headers)


def _grpc_export(server: RunningServer, body: bytes) -> bytes:
    """One raw `Export` call: bytes in, bytes out, so any payload can be sent."""
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        answer: bytes = export(body, timeout=TIMEOUT)
        return answer


def _grpc_error(server: RunningServer, body: bytes) -> Any:
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_export(server, body)
    return raised.value


def _count(db: Client, span_id: str) -> int:
    result = db.query(
        "SELECT count() FROM spans FINAL WHERE SpanId = {span_id:String}",
        parameters={"span_id": span_id},
    )
    count: int = result.result_rows[0][0]
    return count


def _stored(db: Client, span: otlp.Span) -> int:
    return _count(db, span.span_id.hex())


def _stored_json(db: Client, span: dict[str, Any]) -> int:
    return _count(db, span["spanId"])


def _assert_http_serving(server: RunningServer, db: Client) -> None:
    """A valid export after the bad request is answered 200 and its span is stored."""
    span = _span("after")
    response = _post(server, _request(span).SerializeToString(), PROTOBUF)
    assert not _reply(response).HasField("partial_success")
    assert _stored(db, span) == 1


def _assert_grpc_serving(server: RunningServer, db: Client) -> None:
    span = _span("after")
    answer = otlp_trace.ExportTraceServiceResponse.FromString(
        _grpc_export(server, _request(span).SerializeToString())
    )
    assert not answer.HasField("partial_success")
    assert _stored(db, span) == 1


# Servers with small limits ---------------------------------------------------


def _running(dsn: str, **overrides: Any) -> Iterator[RunningServer]:
    running = RunningServer(settings_for(dsn, **overrides)).start()
    yield running
    running.stop()


@pytest.fixture
def small_server(dsn: str) -> Iterator[RunningServer]:
    """Accepts requests of at most 4 KiB on the wire."""
    yield from _running(dsn, max_message_bytes=SMALL_LIMIT)


@pytest.fixture
def bomb_server(dsn: str) -> Iterator[RunningServer]:
    """Accepts anything on the wire up to the default, but at most 1 MiB once inflated."""
    yield from _running(dsn, max_decompressed_bytes=MIB)


# OTLP/HTTP: bodies that do not decode -----------------------------------------


def _truncated() -> bytes:
    return _request(_span("truncated")).SerializeToString()[:-3]


def _bad_utf8() -> bytes:
    return _request(_span("name-xyz")).SerializeToString().replace(b"xyz", b"\xff\xfe\xfd")


def _bad_wire_type() -> bytes:
    return b"\xff" * 16


UNDECODABLE = pytest.mark.parametrize(
    "make_body",
    [_truncated, _bad_utf8, _bad_wire_type],
    ids=["truncated", "invalid-utf8-string", "bad-wire-type"],
)


@UNDECODABLE
def test_undecodable_protobuf_is_400_with_a_status(
    server: RunningServer, db: Client, make_body: Callable[[], bytes]
) -> None:
    response = _post(server, make_body(), PROTOBUF)

    assert response.status_code == 400
    assert response.headers["content-type"] == PROTOBUF
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "not a valid ExportTraceServiceRequest" in status.message
    _assert_http_serving(server, db)


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b'{"resourceSpans": [}', b'{"a": 1,}', b"\xff\xfe", b""],
    ids=["unclosed", "bare-words", "bad-array", "trailing-comma", "not-utf8", "empty"],
)
def test_invalid_json_is_400_with_a_json_status(
    server: RunningServer, db: Client, body: bytes
) -> None:
    response = _post(server, body, JSON)

    assert response.status_code == 400
    assert response.headers["content-type"] == JSON
    document = response.json()
    assert set(document) == {"code", "message"}
    assert document["code"] == code_pb2.INVALID_ARGUMENT
    assert "not valid JSON" in document["message"]
    _assert_http_serving(server, db)


@pytest.mark.parametrize(
    "body",
    [b"[]", b'[{"resourceSpans": []}]', b"null", b"5", b'"resourceSpans"'],
    ids=["empty-array", "array-of-request", "null", "number", "string"],
)
def test_json_that_is_not_an_object_is_400(server: RunningServer, db: Client, body: bytes) -> None:
    response = _post(server, body, JSON)

    assert response.status_code == 400
    assert "must be a JSON object" in rpc_status(response).message
    _assert_http_serving(server, db)


def _json_with_span_fields(**fields: Any) -> bytes:
    return _json_request(_json_span("typed", **fields))


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"resourceSpans": "many"}),
        orjson.dumps({"resourceSpans": [{"scopeSpans": {"spans": []}}]}),
        orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": 3}]}]}),
        _json_with_span_fields(name=42),
        _json_with_span_fields(startTimeUnixNano="soon"),
        _json_with_span_fields(startTimeUnixNano=-1),
        _json_with_span_fields(startTimeUnixNano=1.5),
        _json_with_span_fields(attributes={"key": "value"}),
        _json_with_span_fields(status="STATUS_CODE_ERROR"),
        _json_with_span_fields(events=[{"timeUnixNano": [1]}]),
        _json_with_span_fields(links=5),
        _json_with_span_fields(links=True),
    ],
    ids=[
        "resourceSpans-string",
        "scopeSpans-object",
        "spans-number",
        "name-number",
        "time-word",
        "time-negative",
        "time-fraction",
        "attributes-object",
        "status-string",
        "event-time-array",
        "links-number",
        "links-bool",
    ],
)
def test_json_with_wrong_field_types_is_400(server: RunningServer, db: Client, body: bytes) -> None:
    response = _post(server, body, JSON)

    assert response.status_code == 400, response.text
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "not a valid OTLP/JSON ExportTraceServiceRequest" in status.message
    _assert_http_serving(server, db)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand: the protobuf library will not nest this deep."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_protobuf(depth: int) -> bytes:
    """A request whose one span has an attribute of arrays nested `depth` deep."""
    value = _field(1, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(5, _field(1, value))  # AnyValue.array_value, ArrayValue.values
    attribute = _field(1, b"deep") + _field(2, value)  # KeyValue.key, KeyValue.value
    span = _span("deep").SerializeToString() + _field(9, attribute)  # Span.attributes
    # ExportTraceServiceRequest.resource_spans, ResourceSpans.scope_spans, ScopeSpans.spans
    return _field(1, _field(2, _field(2, span)))


def _deep_json(depth: int) -> bytes:
    value = b'{"stringValue": "leaf"}'
    for _ in range(depth):
        value = b'{"arrayValue": {"values": [' + value + b"]}}"
    attributes = [{"key": "deep", "value": "VALUE"}]
    return _json_request(_json_span("deep", attributes=attributes)).replace(b'"VALUE"', value)


@pytest.mark.parametrize(
    ("body", "content_type", "status_code"),
    [
        (_deep_protobuf(10), PROTOBUF, 200),
        (_deep_protobuf(500), PROTOBUF, 400),
        (_deep_json(10), JSON, 200),
        (_deep_json(200), JSON, 400),
        (_deep_json(400), JSON, 400),
        (b"[" * 100_000, JSON, 400),
    ],
    ids=["protobuf-10", "protobuf-500", "json-10", "json-200", "json-400", "json-brackets"],
)
def test_deep_nesting_is_400_not_a_crash(
    server: RunningServer, db: Client, body: bytes, content_type: str, status_code: int
) -> None:
    response = _post(server, body, content_type)

    assert response.status_code == status_code, response.content
    if status_code == 400:
        assert rpc_status(response).code == code_pb2.INVALID_ARGUMENT
    _assert_http_serving(server, db)


# OTLP/HTTP: media types, methods, sizes, encodings ----------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", None, "application/xml", "multipart/form-data; boundary=x"],
    ids=["text-plain", "none", "xml", "multipart"],
)
def test_unsupported_content_type_is_415(
    server: RunningServer, db: Client, content_type: str | None
) -> None:
    response = _post(server, _request(_span("typed")).SerializeToString(), content_type)

    assert response.status_code == 415
    status = rpc_status(response)
    assert "unsupported Content-Type" in status.message
    assert "application/x-protobuf" in status.message
    _assert_http_serving(server, db)


@pytest.mark.parametrize(
    "content_type",
    [f"{PROTOBUF}; charset=binary", "Application/X-Protobuf", f"{PROTOBUF} ; version=1"],
)
def test_content_type_parameters_and_case_are_accepted(
    server: RunningServer, db: Client, content_type: str
) -> None:
    span = _span("typed")

    response = _post(server, _request(span).SerializeToString(), content_type)

    assert not _reply(response).HasField("partial_success")
    assert _stored(db, span) == 1


def test_get_is_405(server: RunningServer, db: Client) -> None:
    with _http(server) as client:
        response = client.get("/v1/traces")

    assert response.status_code == 405
    _assert_http_serving(server, db)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_message_bytes_is_413(
    small_server: RunningServer, db: Client, chunked: bool
) -> None:
    body = _request(_span("large", padding=2 * SMALL_LIMIT)).SerializeToString()
    assert len(body) > SMALL_LIMIT

    response = _post(small_server, _chunks(body) if chunked else body, PROTOBUF)

    assert response.status_code == 413
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert f"limit of {SMALL_LIMIT}" in status.message
    _assert_http_serving(small_server, db)


def test_gzip_bomb_is_413(bomb_server: RunningServer, db: Client) -> None:
    bomb = _gzip_bomb(200 * MIB)
    assert len(bomb) < MIB

    response = _post(bomb_server, bomb, PROTOBUF, encoding="gzip")

    assert response.status_code == 413
    assert f"more than {MIB} bytes" in rpc_status(response).message
    _assert_http_serving(bomb_server, db)


def test_gzip_body_is_accepted(server: RunningServer, db: Client) -> None:
    # The control for the encoding cases below: gzip itself is fine.
    span = _span("gzipped")

    body = gzip.compress(_request(span).SerializeToString())
    response = _post(server, body, PROTOBUF, encoding="gzip")

    assert not _reply(response).HasField("partial_success")
    assert _stored(db, span) == 1


@pytest.mark.parametrize(
    ("encoding", "body", "status_code", "reason"),
    [
        ("gzip", b"plainly not gzip", 400, "not valid gzip"),
        ("gzip", gzip.compress(b"\x0a\x00" * 512)[:-12], 400, "truncated gzip"),
        ("deflate", b"plainly not deflate", 400, "not valid deflate"),
        ("br", b"\x0b\x02\x80hello\x03", 415, "unsupported Content-Encoding 'br'"),
        ("gzip, gzip", b"", 415, "unsupported Content-Encoding"),
    ],
    ids=["not-gzip", "truncated-gzip", "not-deflate", "brotli", "gzip-twice"],
)
def test_bad_content_encoding(
    server: RunningServer,
    db: Client,
    encoding: str,
    body: bytes,
    status_code: int,
    reason: str,
) -> None:
    response = _post(server, body, PROTOBUF, encoding=encoding)

    assert response.status_code == status_code
    assert reason in rpc_status(response).message
    _assert_http_serving(server, db)


# OTLP/HTTP: spans left out of a good export -----------------------------------


def test_protobuf_span_with_8_byte_trace_id_is_a_partial_success(
    server: RunningServer, db: Client
) -> None:
    bad, good = _span("short-trace", trace_id=bytes(range(1, 9))), _span("good")

    response = _post(server, _request(bad, good).SerializeToString(), PROTOBUF)

    partial = _reply(response).partial_success
    assert partial.rejected_spans == 1
    assert "trace_id must be 16 bytes" in partial.error_message
    assert (_stored(db, bad), _stored(db, good)) == (0, 1)
    _assert_http_serving(server, db)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"traceId": bytes(range(1, 9)).hex()}, "trace_id must be 16 bytes"),
        ({"traceId": "zz" * 16}, "traceId 'zzzz"),
        ({"spanId": "abc"}, "spanId 'abc' is not hex"),
        ({"traceId": 7}, "traceId must be a hex string"),
        ({"links": [{"traceId": "not hex", "spanId": "01" * 8}]}, "is not hex"),
    ],
    ids=["8-byte-trace-id", "trace-id-not-hex", "odd-span-id", "numeric-id", "link-not-hex"],
)
def test_json_span_with_bad_id_is_a_partial_success(
    server: RunningServer, db: Client, fields: dict[str, Any], reason: str
) -> None:
    bad, good = _json_span("bad-id", **fields), _json_span("good")

    response = _post(server, _json_request(bad, good), JSON)

    assert response.headers["content-type"] == JSON
    partial = _reply(response).partial_success
    assert partial.rejected_spans == 1
    assert reason in partial.error_message
    assert (_stored_json(db, bad), _stored_json(db, good)) == (0, 1)
    _assert_http_serving(server, db)


@pytest.mark.parametrize("as_string", [False, True], ids=["numbers", "strings"])
def test_json_snake_case_and_64_bit_ints_are_accepted(
    server: RunningServer, db: Client, as_string: bool
) -> None:
    end, big = START_NS + 987_654_321, 2**63 - 1
    n = next(_ids)
    span = {
        "trace_id": n.to_bytes(16, "big").hex(),
        "span_id": n.to_bytes(8, "big").hex(),
        "parent_span_id": "",
        "name": "snake",
        "start_time_unix_nano": str(START_NS) if as_string else START_NS,
        "end_time_unix_nano": str(end) if as_string else end,
        "attributes": [{"key": "big", "value": {"int_value": str(big) if as_string else big}}],
    }
    body = orjson.dumps({"resource_spans": [{"scope_spans": [{"spans": [span]}]}]})

    response = _post(server, body, JSON)

    assert not _reply(response).HasField("partial_success")
    row = db.query(
        "SELECT toUnixTimestamp64Nano(Timestamp), Duration, SpanAttributes['big'] "
        "FROM spans FINAL WHERE SpanId = {span_id:String}",
        parameters={"span_id": span["span_id"]},
    ).result_rows
    assert row == [(START_NS, end - START_NS, str(big))]


# Valid data a hostile client can send ---------------------------------------


def _spans_over_days(days: int) -> list[otlp.Span]:
    spans = []
    for day in range(days):
        span = _span(f"day-{day}")
        span.start_time_unix_nano = START_NS + day * 86_400 * 10**9
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000
        spans.append(span)
    return spans


def test_spans_spread_over_many_days_are_stored(server: RunningServer, db: Client) -> None:
    # Valid OTLP: a replay or a client with a broken clock. Not data to refuse,
    # and not a retryable failure either (the retry would fail the same way).
    spans = _spans_over_days(101)

    response = _post(server, _request(*spans).SerializeToString(), PROTOBUF)

    assert response.status_code == 200, rpc_status(response).message
    assert sum(_stored(db, span) for span in spans) == len(spans)


@pytest.fixture
def slow_batch_server(dsn: str) -> Iterator[RunningServer]:
    """Groups every export of a two-second window into one insert."""
    yield from _running(dsn, batch_max_delay_ms=2_000.0)


def test_one_clients_spans_do_not_fail_anothers_export(
    slow_batch_server: RunningServer, db: Client
) -> None:
    innocent = _span("innocent")
    bodies = [
        _request(*_spans_over_days(101)).SerializeToString(),
        _request(innocent).SerializeToString(),
    ]

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda body: _post(slow_batch_server, body, PROTOBUF), bodies))

    assert responses[1].status_code == 200, rpc_status(responses[1]).message
    assert _stored(db, innocent) == 1


# OTLP/gRPC -------------------------------------------------------------------


@UNDECODABLE
def test_grpc_garbage_is_invalid_argument(
    server: RunningServer, db: Client, make_body: Callable[[], bytes]
) -> None:
    error = _grpc_error(server, make_body())

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportTraceServiceRequest" in error.details()
    _assert_grpc_serving(server, db)


def test_grpc_message_over_max_message_bytes_is_resource_exhausted(
    small_server: RunningServer, db: Client
) -> None:
    body = _request(_span("large", padding=2 * SMALL_LIMIT)).SerializeToString()

    error = _grpc_error(small_server, body)

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_grpc_serving(small_server, db)


def test_grpc_span_with_8_byte_trace_id_is_a_partial_success(
    server: RunningServer, db: Client
) -> None:
    bad, good = _span("short-trace", trace_id=bytes(range(1, 9))), _span("good")

    answer = otlp_trace.ExportTraceServiceResponse.FromString(
        _grpc_export(server, _request(bad, good).SerializeToString())
    )

    assert answer.partial_success.rejected_spans == 1
    assert "trace_id must be 16 bytes" in answer.partial_success.error_message
    assert (_stored(db, bad), _stored(db, good)) == (0, 1)
    _assert_grpc_serving(server, db)


@pytest.mark.parametrize("service", ["", TRACE_SERVICE], ids=["server", "trace-service"])
def test_grpc_health_check_is_serving(server: RunningServer, service: str) -> None:
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)

    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_health_check_of_an_unknown_service_is_not_found(server: RunningServer) -> None:
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# Random bytes ------------------------------------------------------------------


def test_random_bytes_are_answered_200_or_400(server: RunningServer, db: Client) -> None:
    @settings(max_examples=30, deadline=None, database=None)
    @given(body=st.binary(max_size=2_048), content_type=st.sampled_from([PROTOBUF, JSON]))
    def post(body: bytes, content_type: str) -> None:
        response = _post(server, body, content_type)
        assert response.status_code in (200, 400), response.content
        with _http(server) as client:
            assert client.get("/healthz").json() == {"status": "ok"}

    post()
    _assert_http_serving(server, db)

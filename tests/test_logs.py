"""Log records through every OTLP door into `logs`, and back out as a step's events and streams.

A real server (collector and query API in a thread of this process) on free
ports, over real chDB. Records come from the OpenTelemetry SDK's own log
exporters (gRPC and HTTP/protobuf), as OTLP/JSON, and as hand-built
protobuf; hostile requests get the answer the OTLP specification promises
and leave the server serving; a retried export is stored once; and a step's
linked records come back from the API as its events, its streamed chunks
joined into `streams`.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client
from google.rpc import code_pb2
from grpc import Compression as GrpcCompression
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    InMemoryLogRecordExporter,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from builders import JSON, PROTOBUF, export_reply, new_id, request, rpc_status, set_value, span
from conftest import RunningServer, server_settings
from tracehouse.query_api.views import rfc3339
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.rows import decode_attributes

LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MIB = 1024 * 1024
TIMEOUT = 30.0
START_NS = 1_700_000_000_123_456_789  # not a float64: shows ints travel exactly

_bodies = itertools.count(1)


# Reading back -----------------------------------------------------------------


def _reply(response: httpx.Response) -> otlp_logs.ExportLogsServiceResponse:
    return export_reply(response, otlp_logs.ExportLogsServiceResponse())


def read_logs(db: Client) -> list[dict[str, Any]]:
    """Every stored log record (deduplicated), attributes and body typed again."""
    result = db.query(
        "SELECT *, toUnixTimestamp64Nano(Timestamp) AS at,"
        " toUnixTimestamp64Nano(ObservedTimestamp) AS observed"
        " FROM logs FINAL ORDER BY at, ChunkIndex"
    )
    rows = []
    for row in result.named_results():
        types = row["AttributeTypes"]
        row["attributes"] = decode_attributes(row["LogAttributes"], types, "s")
        row["resource"] = decode_attributes(row["ResourceAttributes"], types, "r")
        row["body"] = decode_attributes({"body": row["Body"]}, types, "b")["body"]
        rows.append(row)
    return rows


def _stored_body(db: Client, body: str) -> int:
    result = db.query(
        "SELECT count() FROM logs FINAL WHERE Body = {body:String}", parameters={"body": body}
    )
    count: int = result.result_rows[0][0]
    return count


def _stored(db: Client, record: logs_pb2.LogRecord) -> int:
    """How many rows hold this record's body (every hand-built record has its own)."""
    return _stored_body(db, record.body.string_value)


# 1. The SDK's own exporters ------------------------------------------------------


def grpc_exporter(server: RunningServer, gzip_on: bool) -> LogRecordExporter:
    compression = GrpcCompression.Gzip if gzip_on else None
    return GrpcExporter(
        endpoint=server.grpc_endpoint, insecure=True, compression=compression, timeout=10
    )


def http_exporter(server: RunningServer, gzip_on: bool) -> LogRecordExporter:
    compression = HttpCompression.Gzip if gzip_on else HttpCompression.NoCompression
    return HttpExporter(endpoint=f"{server.http_base}/v1/logs", compression=compression, timeout=10)


SDK_EXPORTERS: dict[str, Callable[[RunningServer], LogRecordExporter]] = {
    "grpc": lambda s: grpc_exporter(s, False),
    "grpc-gzip": lambda s: grpc_exporter(s, True),
    "http-protobuf": lambda s: http_exporter(s, False),
    "http-protobuf-gzip": lambda s: http_exporter(s, True),
}

SDK_ATTRIBUTES: dict[str, Any] = {
    "text": "héllo ✓",
    "flag": True,
    "count": -42,
    "ratio": 3.25,
    "words": ["a", "b"],
}
CHOICE_BODY: dict[str, Any] = {
    "index": 0,
    "finish_reason": "stop",
    "message": {"role": "assistant", "content": "Sunny, 21 °C"},
}


def emit_records(exporter: LogRecordExporter) -> Sequence[ReadableLogRecord]:
    """Three records through a batching LoggerProvider: two inside a span, one outside any."""
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # untyped upstream
    resource = Resource.create({"service.name": "log-svc", "service.version": "2.0.1"})
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, schedule_delay_millis=50))
    logger = provider.get_logger("test.logs", "0.3")
    tracer = TracerProvider().get_tracer("test.spans")
    with tracer.start_as_current_span("chat fake-model"):
        logger.emit(
            timestamp=START_NS,
            body="héllo from inside a span",
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            attributes={"n": 0} | SDK_ATTRIBUTES,
        )
        logger.emit(
            body=CHOICE_BODY,
            severity_number=SeverityNumber.DEBUG,
            event_name="gen_ai.choice",
            attributes={"n": 1},
        )
    logger.emit(
        body="no span here",
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        attributes={"n": 2},
    )
    provider.shutdown()  # drains the batch processor: exported before this returns
    return memory.get_finished_logs()


def plain(value: Any) -> Any:
    """SDK attribute values as they read back: tuples become lists."""
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("transport", SDK_EXPORTERS)
def test_every_log_field_survives_a_real_exporter(
    transport: str, server: RunningServer, db: Client
) -> None:
    sent = emit_records(SDK_EXPORTERS[transport](server))

    stored = {row["attributes"]["n"]: row for row in read_logs(db)}
    assert len(sent) == 3
    assert sorted(stored) == [0, 1, 2], "a record without a span is stored, not dropped"
    for readable in sent:
        record = readable.log_record
        row = stored[(record.attributes or {})["n"]]
        assert row["ProjectId"] == "default"
        assert row["TraceId"] == (f"{record.trace_id:032x}" if record.trace_id else "")
        assert row["SpanId"] == (f"{record.span_id:016x}" if record.span_id else "")
        assert row["TraceFlags"] == int(record.trace_flags or 0)
        assert record.observed_timestamp is not None
        assert row["observed"] == record.observed_timestamp
        # No time of its own: the time it was observed stands in.
        assert row["at"] == (record.timestamp or record.observed_timestamp)
        assert row["SeverityText"] == (record.severity_text or "")
        assert record.severity_number is not None
        assert row["SeverityNumber"] == record.severity_number.value
        assert row["body"] == record.body
        assert row["EventName"] == (record.event_name or "")
        assert row["attributes"] == {k: plain(v) for k, v in (record.attributes or {}).items()}
        assert row["ServiceName"] == "log-svc"
        assert row["resource"]["service.version"] == "2.0.1"
        assert (row["ScopeName"], row["ScopeVersion"]) == ("test.logs", "0.3")
        assert (row["Channel"], row["ChunkIndex"]) == ("", 0)

    in_span, choice, outside = stored[0], stored[1], stored[2]
    assert len(in_span["TraceId"]) == 32
    assert len(in_span["SpanId"]) == 16
    assert (choice["TraceId"], choice["SpanId"]) == (in_span["TraceId"], in_span["SpanId"])
    assert (outside["TraceId"], outside["SpanId"], outside["TraceFlags"]) == ("", "", 0)
    assert in_span["at"] == START_NS
    assert in_span["Body"] == "héllo from inside a span"
    assert in_span["LogAttributes"]["count"] == "-42", "attribute values are plain text"
    assert choice["body"] == CHOICE_BODY
    assert orjson.loads(choice["Body"]) == CHOICE_BODY, "a structured body is stored as JSON"


# 2. OTLP/JSON ---------------------------------------------------------------------

JSON_BODY = {
    "kvlistValue": {
        "values": [
            {"key": "role", "value": {"stringValue": "assistant"}},
            {"key": "tokens", "value": {"intValue": "9007199254740993"}},
            {"key": "parts", "value": {"arrayValue": {"values": [{"stringValue": "hi"}]}}},
        ]
    }
}


def _json_logs(*records: dict[str, Any], service: str = "json-svc") -> bytes:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    scope = {"scope": {"name": "json.scope", "version": "1.0"}, "logRecords": list(records)}
    return orjson.dumps({"resourceLogs": [{"resource": resource, "scopeLogs": [scope]}]})


@pytest.mark.parametrize("gzip_on", [False, True], ids=["plain", "gzip"])
def test_otlp_json_logs_are_stored(gzip_on: bool, server: RunningServer, db: Client) -> None:
    record = {
        "timeUnixNano": str(START_NS),
        "observedTimeUnixNano": START_NS + 1,
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "flags": 1,
        "severityNumber": 17,
        "severityText": "ERROR",
        "eventName": "gen_ai.choice",
        "body": JSON_BODY,
        "attributes": [{"key": "attempt", "value": {"intValue": 2}}],
    }
    body = _json_logs(record, {"body": {"stringValue": "unlinked"}, "severityNumber": 9})
    headers = {"Content-Type": JSON}
    if gzip_on:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"

    response = httpx.post(f"{server.http_base}/v1/logs", content=body, headers=headers)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON
    assert response.json() == {}
    linked, unlinked = sorted(read_logs(db), key=lambda row: row["TraceId"], reverse=True)
    assert linked["TraceId"] == "5b8efff798038103d269b633813fc60c"
    assert linked["SpanId"] == "eee19b7ec3c1b174"
    assert linked["TraceFlags"] == 1
    assert (linked["at"], linked["observed"]) == (START_NS, START_NS + 1)
    assert (linked["SeverityNumber"], linked["SeverityText"]) == (17, "ERROR")
    assert linked["EventName"] == "gen_ai.choice"
    assert linked["body"] == {"role": "assistant", "tokens": 9007199254740993, "parts": ["hi"]}
    assert linked["attributes"] == {"attempt": 2}
    assert (linked["ServiceName"], linked["ScopeName"], linked["ScopeVersion"]) == (
        "json-svc", "json.scope", "1.0",
    )  # fmt: skip
    assert (unlinked["TraceId"], unlinked["SpanId"]) == ("", "")
    assert (unlinked["body"], unlinked["SeverityNumber"]) == ("unlinked", 9)


# 3. Hostile input -------------------------------------------------------------------


def _record(*, trace_id: bytes | None = None, span_id: bytes | None = None) -> logs_pb2.LogRecord:
    """A valid record with ids and a body of its own, unless told otherwise."""
    record = logs_pb2.LogRecord(
        time_unix_nano=START_NS,
        trace_id=new_id(16) if trace_id is None else trace_id,
        span_id=new_id(8) if span_id is None else span_id,
        severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
    )
    record.body.string_value = f"record {next(_bodies)}"
    return record


def _logs_request(*records: logs_pb2.LogRecord) -> otlp_logs.ExportLogsServiceRequest:
    built = otlp_logs.ExportLogsServiceRequest()
    resource_logs = built.resource_logs.add()
    set_value(resource_logs.resource.attributes.add(key="service.name").value, "logs")
    resource_logs.scope_logs.add().log_records.extend(records)
    return built


def _json_record(**fields: Any) -> dict[str, Any]:
    record = {
        "timeUnixNano": str(START_NS),
        "traceId": new_id(16).hex(),
        "spanId": new_id(8).hex(),
        "body": {"stringValue": f"record {next(_bodies)}"},
    }
    return record | fields


def _stored_json(db: Client, record: dict[str, Any]) -> int:
    return _stored_body(db, record["body"]["stringValue"])


def _post(
    server: RunningServer, body: bytes, content_type: str | None, encoding: str | None = None
) -> httpx.Response:
    given = {"Content-Type": content_type, "Content-Encoding": encoding}
    headers = {name: value for name, value in given.items() if value is not None}
    # A new connection per request: "still serving" means serving the next client.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.http_base, timeout=TIMEOUT, limits=limits) as client:
        return client.post("/v1/logs", content=body, headers=headers)


def _grpc_export(server: RunningServer, body: bytes) -> otlp_logs.ExportLogsServiceResponse:
    """One raw `LogsService/Export` call, so any payload can be sent."""
    with grpc.insecure_channel(server.grpc_endpoint) as channel:
        export = channel.unary_unary(
            LOGS_EXPORT, request_serializer=None, response_deserializer=None
        )
        return otlp_logs.ExportLogsServiceResponse.FromString(export(body, timeout=TIMEOUT))


def _assert_http_serving(server: RunningServer, db: Client) -> None:
    """A valid export after the bad request is answered 200 and its record is stored."""
    record = _record()
    response = _post(server, _logs_request(record).SerializeToString(), PROTOBUF)
    assert not _reply(response).HasField("partial_success")
    assert _stored(db, record) == 1


def _assert_grpc_serving(server: RunningServer, db: Client) -> None:
    record = _record()
    answer = _grpc_export(server, _logs_request(record).SerializeToString())
    assert not answer.HasField("partial_success")
    assert _stored(db, record) == 1


# Servers shared by the tests of this module whose records have bodies of their
# own: a server start costs more than most of these tests.


@pytest.fixture(scope="module")
def shared_dsn(chdb_dir: Path) -> str:
    return f"chdb://{chdb_dir}?database=test_logs_shared"


def _serve(dsn: str, **overrides: Any) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(dsn, **overrides)).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shared_server(shared_dsn: str) -> Iterator[RunningServer]:
    yield from _serve(shared_dsn)


@pytest.fixture(scope="module")
def bomb_server(shared_dsn: str) -> Iterator[RunningServer]:
    """Accepts anything on the wire up to the default, but at most 1 MiB once inflated."""
    yield from _serve(shared_dsn, max_decompressed_bytes=MIB)


@pytest.fixture(scope="module")
def shared_db(shared_dsn: str) -> Iterator[Client]:
    client = open_client(shared_dsn)
    yield client
    client.close()


def _truncated() -> bytes:
    return _logs_request(_record()).SerializeToString()[:-3]


def _bad_wire_type() -> bytes:
    return b"\xff" * 16


UNDECODABLE = pytest.mark.parametrize(
    "make_body", [_truncated, _bad_wire_type], ids=["truncated", "bad-wire-type"]
)


@UNDECODABLE
def test_undecodable_protobuf_logs_are_400(
    shared_server: RunningServer, shared_db: Client, make_body: Callable[[], bytes]
) -> None:
    response = _post(shared_server, make_body(), PROTOBUF)

    assert response.status_code == 400
    assert response.headers["content-type"] == PROTOBUF
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "not a valid ExportLogsServiceRequest" in status.message
    _assert_http_serving(shared_server, shared_db)


@UNDECODABLE
def test_undecodable_grpc_logs_are_invalid_argument(
    shared_server: RunningServer, shared_db: Client, make_body: Callable[[], bytes]
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _grpc_export(shared_server, make_body())

    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportLogsServiceRequest" in error.details()
    _assert_grpc_serving(shared_server, shared_db)


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b'{"resourceLogs": [}', b""],
    ids=["unclosed", "words", "array", "empty"],
)
def test_malformed_json_logs_are_400(
    shared_server: RunningServer, shared_db: Client, body: bytes
) -> None:
    response = _post(shared_server, body, JSON)

    assert response.status_code == 400
    assert response.headers["content-type"] == JSON
    assert response.json()["code"] == code_pb2.INVALID_ARGUMENT
    assert "not valid JSON" in response.json()["message"]
    _assert_http_serving(shared_server, shared_db)


def _in_scope(records: Any) -> bytes:
    return orjson.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]})


@pytest.mark.parametrize(
    "body",
    [
        _in_scope("x"),
        _in_scope([5]),
        orjson.dumps({"resourceLogs": "x"}),
        orjson.dumps({"resourceLogs": [{"scopeLogs": {"logRecords": []}}]}),
        _in_scope([_json_record(body="plain text")]),
        _in_scope([_json_record(attributes={"key": "value"})]),
        _in_scope([_json_record(timeUnixNano="soon")]),
        _in_scope([_json_record(severityText=17)]),
    ],
    ids=[
        "logRecords-string",
        "logRecords-numbers",
        "resourceLogs-string",
        "scopeLogs-object",
        "body-string",
        "attributes-object",
        "time-word",
        "severityText-number",
    ],
)
def test_json_logs_of_the_wrong_shape_are_400(
    shared_server: RunningServer, shared_db: Client, body: bytes
) -> None:
    response = _post(shared_server, body, JSON)

    assert response.status_code == 400, response.text
    status = rpc_status(response)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "OTLP/JSON" in status.message
    assert "ExportLogsServiceRequest" in status.message
    _assert_http_serving(shared_server, shared_db)


def _gzip_bomb(size: int) -> bytes:
    """`size` bytes of zeros, gzip-compressed a megabyte at a time (small on the wire)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    return b"".join([*(deflater.compress(zeros) for _ in range(size // MIB)), deflater.flush()])


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_gzip_bomb_logs_are_413(
    bomb_server: RunningServer, shared_db: Client, content_type: str
) -> None:
    bomb = _gzip_bomb(64 * MIB)
    assert len(bomb) < MIB

    response = _post(bomb_server, bomb, content_type, encoding="gzip")

    assert response.status_code == 413
    assert f"more than {MIB} bytes" in rpc_status(response).message
    _assert_http_serving(bomb_server, shared_db)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/grpc", "application/x-www-form-urlencoded", None],
    ids=["text", "grpc", "form", "missing"],
)
def test_unsupported_content_type_is_415(
    shared_server: RunningServer, shared_db: Client, content_type: str | None
) -> None:
    response = _post(shared_server, _logs_request(_record()).SerializeToString(), content_type)

    assert response.status_code == 415
    assert "unsupported Content-Type" in rpc_status(response).message
    _assert_http_serving(shared_server, shared_db)


BAD_IDS = pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ({"trace_id": bytes(range(1, 6))}, "trace_id must be empty or 16 bytes"),
        ({"span_id": bytes(range(1, 4))}, "span_id must be empty or 8 bytes"),
    ],
    ids=["5-byte-trace-id", "3-byte-span-id"],
)


@BAD_IDS
def test_protobuf_log_with_bad_id_length_is_a_partial_success(
    shared_server: RunningServer, shared_db: Client, ids: dict[str, bytes], reason: str
) -> None:
    bad, good = _record(**ids), _record()

    response = _post(shared_server, _logs_request(bad, good).SerializeToString(), PROTOBUF)

    partial = _reply(response).partial_success
    assert partial.rejected_log_records == 1
    assert reason in partial.error_message
    assert (_stored(shared_db, bad), _stored(shared_db, good)) == (0, 1)
    _assert_http_serving(shared_server, shared_db)


@BAD_IDS
def test_grpc_log_with_bad_id_length_is_a_partial_success(
    shared_server: RunningServer, shared_db: Client, ids: dict[str, bytes], reason: str
) -> None:
    bad, good = _record(**ids), _record()

    answer = _grpc_export(shared_server, _logs_request(bad, good).SerializeToString())

    assert answer.partial_success.rejected_log_records == 1
    assert reason in answer.partial_success.error_message
    assert (_stored(shared_db, bad), _stored(shared_db, good)) == (0, 1)
    _assert_grpc_serving(shared_server, shared_db)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"traceId": "zz" * 16}, "traceId 'zzzz"),
        ({"spanId": "abc"}, "spanId 'abc' is not hex"),
        ({"traceId": 7}, "traceId must be a hex string"),
        ({"trace_id": "0102030405"}, "trace_id must be empty or 16 bytes"),
    ],
    ids=["trace-id-not-hex", "odd-span-id", "numeric-id", "5-byte-trace-id"],
)
def test_json_log_with_bad_id_is_a_partial_success(
    shared_server: RunningServer, shared_db: Client, fields: dict[str, Any], reason: str
) -> None:
    bad, good = _json_record(**fields), _json_record()

    response = _post(shared_server, _json_logs(bad, good), JSON)

    assert response.headers["content-type"] == JSON
    partial = _reply(response).partial_success
    assert partial.rejected_log_records == 1
    assert reason in partial.error_message
    assert (_stored_json(shared_db, bad), _stored_json(shared_db, good)) == (0, 1)
    _assert_http_serving(shared_server, shared_db)


# 4. A retried export ---------------------------------------------------------------


def _chunk(step: otlp.Span, index: int, text: str, at: int) -> logs_pb2.LogRecord:
    """Streamed output text, as the client helper sends it."""
    record = logs_pb2.LogRecord(
        time_unix_nano=at,
        observed_time_unix_nano=at,
        trace_id=step.trace_id,
        span_id=step.span_id,
        event_name="tracehouse.chunk",
    )
    set_value(record.body, text)
    set_value(record.attributes.add(key="tracehouse.chunk.channel").value, "output")
    set_value(record.attributes.add(key="tracehouse.chunk.index").value, index)
    return record


def _send_http(server: RunningServer, body: bytes) -> otlp_logs.ExportLogsServiceResponse:
    return _reply(_post(server, body, PROTOBUF))


SENDERS: dict[str, Callable[[RunningServer, bytes], otlp_logs.ExportLogsServiceResponse]] = {
    "http-protobuf": _send_http,
    "grpc": _grpc_export,
}


@pytest.mark.parametrize("transport", SENDERS)
def test_an_export_sent_three_times_is_stored_once(
    transport: str, shared_server: RunningServer, shared_db: Client
) -> None:
    step = span("chat m", new_id(16), new_id(8))
    chunk = _chunk(step, 0, f"chunk {next(_bodies)}", START_NS)
    records = [_record(), _record(trace_id=b"", span_id=b""), chunk]
    body = _logs_request(*records).SerializeToString()

    answers = [SENDERS[transport](shared_server, body) for _ in range(3)]
    assert not any(answer.HasField("partial_success") for answer in answers)

    assert [_stored(shared_db, record) for record in records] == [1, 1, 1]


def test_distinct_records_of_one_span_and_time_are_all_stored(
    shared_server: RunningServer, shared_db: Client
) -> None:
    # GenAI message events with content capture off have no body; an
    # instrumentation may stamp them all with the span's start. They are
    # different records (name, severity, attributes), not one record retried.
    trace_id, span_id = new_id(16), new_id(8)
    messages = (("gen_ai.system.message", "INFO"), ("gen_ai.user.message", "WARN"))
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=START_NS,
            trace_id=trace_id,
            span_id=span_id,
            event_name=name,
            severity_text=severity,
        )
        for name, severity in messages
    ]
    for i, record in enumerate(records):
        set_value(record.attributes.add(key="gen_ai.message.index").value, i)

    answer = _grpc_export(shared_server, _logs_request(*records).SerializeToString())

    assert not answer.HasField("partial_success")
    stored = shared_db.query(
        "SELECT EventName, SeverityText FROM logs FINAL WHERE TraceId = {trace:String}"
        " ORDER BY EventName",
        parameters={"trace": trace_id.hex()},
    ).result_rows
    assert stored == [("gen_ai.system.message", "INFO"), ("gen_ai.user.message", "WARN")]


# 5. A step's linked records, through the API ---------------------------------------


def _choice(step: otlp.Span) -> logs_pb2.LogRecord:
    record = logs_pb2.LogRecord(
        time_unix_nano=step.end_time_unix_nano,
        trace_id=step.trace_id,
        span_id=step.span_id,
        severity_number=logs_pb2.SEVERITY_NUMBER_INFO,
        severity_text="INFO",
        event_name="gen_ai.choice",
    )
    set_value(record.body, CHOICE_BODY)
    set_value(record.attributes.add(key="gen_ai.system").value, "openai")
    return record


# Milliseconds into the step at which chunks 0 and 1 were stamped.
CHUNK_TIMES = {
    "stamped-in-order": (1, 2),
    "same-stamp": (1, 1),
    # The client's wall clock stepped back between the two (NTP), or two
    # threads numbered their chunks in one order and stamped them in the other.
    "stamped-out-of-order": (2, 1),
}


@pytest.mark.parametrize("times", CHUNK_TIMES.values(), ids=CHUNK_TIMES)
def test_a_steps_detail_lists_its_events_and_joins_its_chunks(
    shared_server: RunningServer, times: tuple[int, int]
) -> None:
    trace, root_id, chat_id = new_id(16), new_id(8), new_id(8)
    agent = {"gen_ai.operation.name": "invoke_agent"}
    llm = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    root = span("invoke_agent helper", trace, root_id, start=0, end=100, attributes=agent)
    chat = span("chat m", trace, chat_id, root_id, start=10, end=90, attributes=llm)
    spans = request([chat, root]).SerializeToString()
    sent = httpx.post(f"{shared_server.http_base}/v1/traces", content=spans,
                      headers={"Content-Type": PROTOBUF}, timeout=TIMEOUT)  # fmt: skip
    assert sent.status_code == 200
    at = [chat.start_time_unix_nano + ms * 1_000_000 for ms in times]
    records = [_chunk(chat, 1, "world!", at[1]), _chunk(chat, 0, "Hello, ", at[0]), _choice(chat)]
    answer = _grpc_export(shared_server, _logs_request(*records).SerializeToString())
    assert not answer.HasField("partial_success")

    url = f"{shared_server.api_base}/api/v1/runs/{root_id.hex()}/steps/{chat_id.hex()}"
    response = httpx.get(url, timeout=TIMEOUT)

    assert response.status_code == 200, response.text
    detail = response.json()
    assert (detail["step_id"], detail["kind"]) == (chat_id.hex(), "llm")
    assert detail["streams"] == {"output": "Hello, world!"}
    assert detail["events"] == [
        {
            "name": "gen_ai.choice",
            "time": rfc3339(chat.end_time_unix_nano),
            "attributes": {"gen_ai.system": "openai"},
            "body": CHOICE_BODY,
            "severity": "INFO",
        }
    ], "chunks are the streams, not events"

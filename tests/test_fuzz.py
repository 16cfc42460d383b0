"""Fuzzing the OTLP decoders and the mapping with mutated real payloads.

The corpus is every captured fixture, as protobuf and as OTLP/JSON, and a
few hand-built requests with what the captures lack (links, every value
type, a pending span, log records). Mutations are byte-level (bit flips,
inserts, deletes, truncation, splices, concatenation, which protobuf reads
as a merge) and structural (a field set to a hostile value, a repeated
element duplicated or dropped; in JSON a value of another type, a key
deleted or renamed, deep nesting, huge numbers, ids that are not hex).

Whatever arrives, `decode_export` raises a `DecodeError` or returns rows
that fit their columns and never more rows than the request held; the
mapping is total; and a real server answers every mutated export 200, 400,
413 or 415. `make test` runs a bounded, derandomized set of examples;
TRACEHOUSE_FUZZ_EXAMPLES=N runs N of them at random.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs_service
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace_service
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.logs.v1 import logs_pb2 as otlp_logs
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from conftest import FIXTURES, RunningServer
from tracehouse.collector.batcher import Rows
from tracehouse.collector.decode import DecodeError, Signal, decompress
from tracehouse.collector.encode import LOG_ENCODER, SPAN_ENCODER
from tracehouse.collector.logs import log_rows
from tracehouse.collector.mapping import SpanFacts, map_span
from tracehouse.collector.mapping_content import TRUNCATION_MARKER
from tracehouse.collector.prepare import Format, Limits, decode_export
from tracehouse.collector.pricing import price
from tracehouse.schema.rows import (
    LOG_COLUMNS,
    SPAN_COLUMNS,
    WRITTEN_LOG_COLUMNS,
    WRITTEN_SPAN_COLUMNS,
    Status,
    StepKind,
)

# -- how long: bounded and reproducible in CI, longer and random on request ----------------

_EXAMPLES = os.environ.get("TRACEHOUSE_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXAMPLES or 200),
    deadline=None,
    database=None,
    derandomize=_EXAMPLES is None,
    print_blob=_EXAMPLES is not None,
    # In `make test`, shrink one failure only: the tests at the bottom name each bug found.
    report_multiple_bugs=_EXAMPLES is not None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Each example is two exports through a real server: fewer of them.
FUZZ_SERVER = settings(FUZZ, max_examples=max(int(_EXAMPLES or 0) // 10, 30))

LIMITS = Limits(
    max_decompressed_bytes=1024 * 1024,
    max_value_bytes=1024,
    max_spans_per_request=500,
    max_attributes=32,  # small caps, so that mutations reach the capping code too
    max_events=8,
    max_links=4,
)
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SIGNALS = pytest.mark.parametrize("signal", [Signal.TRACES, Signal.LOGS], ids=["traces", "logs"])

# -- the corpus ----------------------------------------------------------------------------

T0 = 1_700_000_000_000_000_000
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
ROOT, TOOL, PENDING = (bytes.fromhex(h) for h in ("b7ad6b7169203331", "00f067aa0ba902b7", "1" * 16))


def _kv(key: str, value: otlp_common.AnyValue) -> otlp_common.KeyValue:
    return otlp_common.KeyValue(key=key, value=value)


def _text(key: str, value: str) -> otlp_common.KeyValue:
    return _kv(key, otlp_common.AnyValue(string_value=value))


def _every_value_type() -> list[otlp_common.KeyValue]:
    array = otlp_common.ArrayValue(
        values=[otlp_common.AnyValue(int_value=1), otlp_common.AnyValue(double_value=math.inf)]
    )
    kvlist = otlp_common.KeyValueList(values=[_text("role", "user"), _text("content", "hi")])
    return [
        _kv("bool", otlp_common.AnyValue(bool_value=True)),
        _kv("int", otlp_common.AnyValue(int_value=-(2**63))),
        _kv("double", otlp_common.AnyValue(double_value=math.nan)),
        _kv("bytes", otlp_common.AnyValue(bytes_value=b"\x00\xff")),
        _kv("array", otlp_common.AnyValue(array_value=array)),
        _kv("kvlist", otlp_common.AnyValue(kvlist_value=kvlist)),
        _kv("empty", otlp_common.AnyValue()),
    ]


def _handmade_traces() -> otlp_trace_service.ExportTraceServiceRequest:
    """What the captures lack: links, every value type, events, a pending span."""
    root = otlp.Span(
        trace_id=TRACE, span_id=ROOT, name="invoke_agent fuzz", trace_state="k=v", flags=0x301,
        kind=otlp.Span.SPAN_KIND_INTERNAL, start_time_unix_nano=T0, end_time_unix_nano=T0 + 9,
        attributes=[_text("gen_ai.operation.name", "invoke_agent"), *_every_value_type()],
        links=[otlp.Span.Link(trace_id=TRACE[::-1], span_id=ROOT[::-1], attributes=[
            _text("link.kind", "parent")])],
        status=otlp.Status(code=otlp.Status.STATUS_CODE_ERROR, message="boom"),
        events=[otlp.Span.Event(time_unix_nano=T0 + 5, name="exception", attributes=[
            _text("exception.type", "asyncio.CancelledError")])],
        dropped_attributes_count=2, dropped_events_count=1, dropped_links_count=1,
    )  # fmt: skip
    tool = otlp.Span(
        trace_id=TRACE, span_id=TOOL, parent_span_id=ROOT, name="execute_tool search",
        kind=otlp.Span.SPAN_KIND_CLIENT, start_time_unix_nano=T0 + 1, end_time_unix_nano=T0 + 2,
        attributes=[
            _text("gen_ai.tool.call.arguments", '{"q": "x"}'),
            _text("llm.input_messages.0.message.role", "user"),
            _text("llm.input_messages.0.message.content", "[1, 2]"),
            _text("gen_ai.usage.input_tokens", "12"),
            _text("gen_ai.request.model", "gpt-4o"),
        ],
    )  # fmt: skip
    pending = otlp.Span(
        trace_id=TRACE, span_id=PENDING, parent_span_id=TOOL, name="pending",
        start_time_unix_nano=T0 + 1, end_time_unix_nano=T0 + 1,
        attributes=[_text("logfire.span_type", "pending_span"),
                    _text("logfire.pending_parent_id", ROOT.hex())],
    )  # fmt: skip
    resource = otlp.ResourceSpans(schema_url="https://opentelemetry.io/schemas/1.26.0")
    resource.resource.attributes.extend([_text("service.name", "fuzz"), *_every_value_type()])
    scope = resource.scope_spans.add(spans=[root, tool, pending])
    scope.scope.name, scope.scope.version = "fuzz", "1.0"
    scope.scope.attributes.append(_text("scope.key", "v"))
    return otlp_trace_service.ExportTraceServiceRequest(resource_spans=[resource])


def _handmade_logs() -> list[otlp_logs_service.ExportLogsServiceRequest]:
    """A streamed chunk, a structured body, a record linked to nothing; two resources."""
    chunk = otlp_logs.LogRecord(
        time_unix_nano=T0, observed_time_unix_nano=T0 + 1, trace_id=TRACE, span_id=TOOL,
        severity_number=otlp_logs.SEVERITY_NUMBER_INFO, severity_text="INFO",
        body=otlp_common.AnyValue(string_value="partial output"), flags=1,
        attributes=[_text("tracehouse.chunk.channel", "output"),
                    _text("tracehouse.chunk.index", "3")],
    )  # fmt: skip
    event = otlp_logs.LogRecord(
        observed_time_unix_nano=T0 + 2, trace_id=TRACE, span_id=ROOT, event_name="gen_ai.choice",
        body=_every_value_type()[5].value, attributes=_every_value_type(),
        dropped_attributes_count=3,
    )  # fmt: skip
    alone = otlp_logs.LogRecord(time_unix_nano=T0, body=otlp_common.AnyValue(bytes_value=b"\x01"))
    first = otlp_logs.ResourceLogs(scope_logs=[otlp_logs.ScopeLogs(log_records=[chunk, event])])
    first.resource.attributes.append(_text("service.name", "fuzz"))
    second = otlp_logs.ResourceLogs(scope_logs=[otlp_logs.ScopeLogs(log_records=[alone])])
    return [
        otlp_logs_service.ExportLogsServiceRequest(resource_logs=[first, second]),
        otlp_logs_service.ExportLogsServiceRequest(resource_logs=[first]),
    ]


_ID_KEYS = frozenset(("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"))


def _hex_ids(node: Any) -> Any:
    """Protobuf's canonical JSON (base64 ids) as OTLP/JSON (hex ids)."""
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    if isinstance(node, dict):
        return {
            key: base64.b64decode(value).hex() if key in _ID_KEYS else _hex_ids(value)
            for key, value in node.items()
        }
    return node


def _otlp_json(message: Any) -> bytes:
    return orjson.dumps(_hex_ids(json_format.MessageToDict(message)))


_TRACE_MESSAGES = [_handmade_traces()]
_LOG_MESSAGES = _handmade_logs()
PROTOBUF_CORPUS: dict[Signal, list[bytes]] = {
    Signal.TRACES: [path.read_bytes() for path in sorted(FIXTURES.glob("*/*.pb"))]
    + [m.SerializeToString() for m in _TRACE_MESSAGES],
    Signal.LOGS: [m.SerializeToString() for m in _LOG_MESSAGES],
}
JSON_CORPUS: dict[Signal, list[bytes]] = {
    Signal.TRACES: [path.read_bytes() for path in sorted(FIXTURES.glob("*/*.json"))]
    + [_otlp_json(m) for m in _TRACE_MESSAGES],
    Signal.LOGS: [_otlp_json(m) for m in _LOG_MESSAGES],
}


def seed(corpus: Sequence[bytes], signal: Signal) -> st.SearchStrategy[bytes]:
    """A corpus item: the hand-built ones (the last few) as often as all captures together."""
    handmade = len(_TRACE_MESSAGES if signal is Signal.TRACES else _LOG_MESSAGES)
    captured = corpus[:-handmade]
    handmade_seeds = st.sampled_from(corpus[-handmade:])
    return st.sampled_from(captured) | handmade_seeds if captured else handmade_seeds


def _keys_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("key"), str):
            yield node["key"]
        for value in node.values():
            yield from _keys_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys_in(item)


# Convention keys the mapping reads (and the captures carry), for attribute keys.
CONVENTION_KEYS = sorted(
    {key for body in JSON_CORPUS[Signal.TRACES] for key in _keys_in(orjson.loads(body))}
    | {
        "tracehouse.step.kind", "tracehouse.run.name", "tracehouse.run.status",
        "tracehouse.run.trigger", "tracehouse.run.version", "tracehouse.chunk.channel",
        "tracehouse.chunk.index", "langfuse.observation.type", "langfuse.observation.input",
        "langfuse.observation.output", "langfuse.trace.input", "langfuse.trace.output",
        "langfuse.session.id", "langfuse.version", "langsmith.span.kind",
        "logfire.span_type", "logfire.pending_parent_id", "logfire.msg", "error.type",
        "session.id", "faas.trigger", "agent.name", "gen_ai.workflow.name",
        "gen_ai.agent.version", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens",
        "gen_ai.usage.total_tokens", "llm.token_count.prompt", "llm.token_count.completion",
        "llm.token_count.total", "llm.model_name", "llm.response.model_name",
        "ai.usage.promptTokens", "ai.usage.completionTokens", "ai.response.object",
        "ai.telemetry.metadata.sessionId", "traceloop.entity.version",
        "traceloop.association.properties.session_id", "service.version",
    }
)  # fmt: skip
FLATTENED_PREFIXES = ("llm.input_messages.", "llm.output_messages.", "gen_ai.prompt.",
                      "gen_ai.completion.")  # fmt: skip
CONVENTION_VALUES = (
    "invoke_agent", "create_agent", "invoke_workflow", "execute_tool", "chat", "embeddings",
    "LLM", "CHAIN", "TOOL", "AGENT", "RETRIEVER", "generation", "agent", "tool", "workflow",
    "task", "llm", "span", "handoff", "pending_span", "cancelled", "ai.generateText",
    "ai.toolCall", "asyncio.CancelledError", "AbortError", "unknown", "gpt-4o", "openai",
    "claude-3-5-sonnet", "output", "reasoning", "0" * 16, "F" * 16,
    "Traceback (most recent call last)",
)  # fmt: skip
ODD_TEXT = (
    "", " ", "\x00", "NaN", "nan", "inf", "-Infinity", "1e400", "-1e400", "1e19", "-0", "0x1F",
    "1_000", "9" * 30, "-5", "--5", "²", "٣", "½", "\u202e", "🙂", "\ufeff", "e\u0301",
    "null", "true", "{}", "[]", "[1, 2]", '{"langgraph_node": 5}', '{"langgraph_node": "agent"}',
    '[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]', '"quoted"', "{", "[",
)  # fmt: skip


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


odd_text = st.one_of(
    st.sampled_from(ODD_TEXT + CONVENTION_VALUES),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.integers(1, 1200).map(_nested),
    st.integers(1, 600).map(lambda n: '{"a": ' * n + "1" + "}" * n),
)
path_part = st.sampled_from(("0", "1", "10", "²", "message", "role", "content", "", "-1"))
attribute_key = st.one_of(
    st.sampled_from(CONVENTION_KEYS),
    st.builds(
        lambda prefix, parts: prefix + ".".join(parts),
        st.sampled_from(FLATTENED_PREFIXES),
        st.lists(path_part | st.text(max_size=3), min_size=1, max_size=5),
    ),
    st.builds(
        lambda prefix, depth: prefix + "0." * depth + "content",
        st.sampled_from(FLATTENED_PREFIXES),
        st.integers(1, 1500),
    ),
    st.text(max_size=12),
)

# -- what decoded rows must hold ---------------------------------------------------------

_BITS = {"UInt8": 8, "UInt32": 32, "UInt64": 64}
_INT64_MAX = 2**63 - 1
_HEX = re.compile(r"[0-9a-f]*")
# Lengths of stored ids (hex): a span's own ids are required; a log record's are optional.
_ID_LENGTHS: dict[Signal, dict[str, tuple[int, ...]]] = {
    Signal.TRACES: {
        "TraceId": (32,), "SpanId": (16,), "ParentSpanId": (0, 16),
        "Links.TraceId": (0, 32), "Links.SpanId": (0, 16),
    },
    Signal.LOGS: {"TraceId": (0, 32), "SpanId": (0, 16)},
}  # fmt: skip
_WRITTEN = {Signal.TRACES: WRITTEN_SPAN_COLUMNS, Signal.LOGS: WRITTEN_LOG_COLUMNS}
_TYPES = {
    Signal.TRACES: {c.name: c.type for c in SPAN_COLUMNS},
    Signal.LOGS: {c.name: c.type for c in LOG_COLUMNS},
}


def _fits(column_type: str, value: Any) -> bool:
    """Whether ClickHouse can take `value` in a column of this type, as far as ranges go."""
    if column_type.startswith("Array("):
        return isinstance(value, list) and all(_fits(column_type[6:-1], v) for v in value)
    if column_type.startswith("Map("):
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if column_type in _BITS:
        return isinstance(value, int) and 0 <= value < 2 ** _BITS[column_type]
    if column_type.startswith("DateTime64"):
        return isinstance(value, int) and 0 <= value <= _INT64_MAX
    if "String" in column_type:
        return isinstance(value, str)
    return True


def _ids(values: list[Any]) -> Iterator[str]:
    for value in values:
        yield from value if isinstance(value, list) else (value,)


def assert_rows_hold(rows: Rows, signal: Signal, items: int) -> None:
    """Rows that fit their columns, with well-formed ids, and no more of them than were sent."""
    assert rows.count + rows.rejected <= items, (rows.count, rows.rejected, items)
    assert not rows.rejected or rows.error
    names, types = _WRITTEN[signal], _TYPES[signal]
    assert len(rows.columns) == len(names)
    for name, column in zip(names, rows.columns, strict=True):
        assert len(column) == rows.count, name
        bad = [value for value in column if not _fits(types[name], value)]
        assert not bad, f"{name} ({types[name]}) cannot hold {bad[0]!r:.200}"
    for name, lengths in _ID_LENGTHS[signal].items():
        for value in _ids(rows.columns[names.index(name)]):
            assert _HEX.fullmatch(value), f"{name} {value!r}"
            assert len(value) in lengths, f"{name} {value!r}"
    if signal is Signal.TRACES:
        for name in ("TraceId", "SpanId"):
            assert not any(set(v) == {"0"} for v in rows.columns[names.index(name)]), name
    # And the decode worker can encode them for their insert.
    block = (SPAN_ENCODER if signal is Signal.TRACES else LOG_ENCODER).encode(rows)
    assert block.count == rows.count
    assert bool(block.data) == bool(rows.count)


def _protobuf_items(raw: bytes, signal: Signal) -> int:
    request: Any = signal.value.request.FromString(raw)
    if signal is Signal.TRACES:
        return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


def _each(container: Any, keys: Sequence[str]) -> Iterator[Any]:
    """Every element of every list under any of `keys` (OTLP/JSON's name or proto's)."""
    for key in keys:
        value = container.get(key) if isinstance(container, dict) else None
        if isinstance(value, list):
            yield from value


def _json_items(raw: bytes, signal: Signal) -> int:
    shape = signal.value
    document = orjson.loads(raw)
    return sum(
        1
        for resource in _each(document, shape.resources)
        for scope in _each(resource, shape.scopes)
        for _ in _each(scope, shape.items)
    )


@dataclass(frozen=True, repr=False)
class Body:
    """A request body as sent: its bytes, their format and Content-Encoding."""

    content: bytes
    fmt: Format
    encoding: str = ""

    def __repr__(self) -> str:
        # Short: a failing example is found again from its seed or blob, not from 60 kB.
        size, crc, head = len(self.content), zlib.crc32(self.content), self.content[:48]
        content = f"{size} bytes, crc32 {crc:08x}, {head!r}..."
        return f"Body({content}, {self.fmt}, {self.encoding!r})"


def decodes_or_refuses(body: Body, signal: Signal) -> None:
    """The property: a `DecodeError`, or rows that hold for what the request carried."""
    try:
        rows = decode_export(body.content, body.fmt, body.encoding, LIMITS, "fuzz", signal)
    except DecodeError:
        return
    raw = decompress(body.content, body.encoding, LIMITS.max_decompressed_bytes)
    count = _protobuf_items if body.fmt is Format.PROTOBUF else _json_items
    assert_rows_hold(rows, signal, count(raw, signal))


# -- mutating protobuf -------------------------------------------------------------------

Draw = st.DrawFn
_T = FieldDescriptor
_INT_RANGES = {
    **dict.fromkeys((_T.TYPE_UINT64, _T.TYPE_FIXED64), (0, 2**64 - 1)),
    **dict.fromkeys((_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((_T.TYPE_UINT32, _T.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32, _T.TYPE_ENUM),
                    (-(2**31), 2**31 - 1)),
}  # fmt: skip
_ID_FIELDS = frozenset(("trace_id", "span_id", "parent_span_id"))


def _edgy_int(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted(n for n in {low, high, 0, 1, -1, 255, 256, 2**32 - 1} if low <= n <= high)
    return st.sampled_from(edges) | st.integers(low, high)


def _value_for(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        return _edgy_int(*_INT_RANGES[field.type])
    if field.type == _T.TYPE_BOOL:
        return st.booleans()
    if field.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return st.floats(width=64 if field.type == _T.TYPE_DOUBLE else 32)
    if field.type == _T.TYPE_STRING:
        return attribute_key if field.name == "key" else odd_text
    if field.name in _ID_FIELDS:
        lengths = st.sampled_from((0, 1, 8, 15, 16, 17, 32))
        return lengths.flatmap(lambda n: st.just(bytes(n)) | st.binary(min_size=n, max_size=n))
    return st.binary(max_size=64)


def _messages(message: Any) -> Iterator[Any]:
    """The message and every message inside it."""
    yield message
    for field in message.DESCRIPTOR.fields:
        if field.message_type is None:
            continue
        if field.is_repeated:
            for item in getattr(message, field.name):
                yield from _messages(item)
        elif message.HasField(field.name):
            yield from _messages(getattr(message, field.name))


def _scalars(request: Any) -> Iterator[tuple[Any, FieldDescriptor]]:
    """Every singular scalar field of the tree, set or not."""
    for message in _messages(request):
        for field in message.DESCRIPTOR.fields:
            if field.message_type is None and not field.is_repeated:
                yield message, field


def _repeated(request: Any) -> Iterator[Any]:
    """Every non-empty repeated message field of the tree."""
    for message in _messages(request):
        for field in message.DESCRIPTOR.fields:
            repeated = field.message_type is not None and field.is_repeated
            if repeated and (items := getattr(message, field.name)):
                yield items


def _set_field(draw: Draw, request: Any) -> None:
    fields = list(_scalars(request))
    ids = [(message, field) for message, field in fields if field.name in _ID_FIELDS]
    if draw(st.integers(0, 2)) == 0 and ids:  # ids decide what is kept: a third of the time
        fields = ids
    if not fields:  # everything dropped already
        return
    message, field = draw(st.sampled_from(fields))
    setattr(message, field.name, draw(_value_for(field)))


def _add_attribute(draw: Draw, request: Any) -> None:
    """A convention key with an odd value, on a span, event, link, record, resource or scope."""
    holders = [m for m in _messages(request) if "attributes" in m.DESCRIPTOR.fields_by_name]
    if holders:
        attributes = draw(st.sampled_from(holders)).attributes
        attributes.add(key=draw(attribute_key)).value.string_value = draw(odd_text)


def _duplicate_or_drop(draw: Draw, request: Any) -> None:
    lists = list(_repeated(request))
    if not lists:
        return
    items = draw(st.sampled_from(lists))
    i = draw(st.integers(0, len(items) - 1))
    if draw(st.booleans()):
        items.add().CopyFrom(items[i])  # a span twice, a key sent twice, ...
    else:
        del items[i]


def _flip(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    if not body:
        return body
    i = draw(st.integers(0, len(body) - 1))
    return body[:i] + bytes([body[i] ^ 1 << draw(st.integers(0, 7))]) + body[i + 1 :]


def _insert(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    i = draw(st.integers(0, len(body)))
    varints = st.sampled_from((b"\xff" * 10, b"\x80" * 10 + b"\x01", b"\xff\xff\xff\xff\x0f"))
    return body[:i] + draw(varints | st.binary(min_size=1, max_size=16)) + body[i:]


def _delete(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    i = draw(st.integers(0, len(body)))
    return body[:i] + body[i + draw(st.integers(1, 32)) :]


def _truncate(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    return body[: draw(st.integers(0, len(body)))]


def _splice(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    other = draw(st.sampled_from(corpus))
    return body[: draw(st.integers(0, len(body)))] + other[draw(st.integers(0, len(other))) :]


def _concatenate(draw: Draw, body: bytes, corpus: Sequence[bytes]) -> bytes:
    """Protobuf reads two messages one after the other as one: every repeated field twice."""
    return body + draw(st.sampled_from(corpus))


BYTE_MUTATIONS: tuple[Callable[[Draw, bytes, Sequence[bytes]], bytes], ...] = (
    _flip, _insert, _delete, _truncate, _splice, _concatenate,
)  # fmt: skip


FIELD_MUTATIONS: tuple[Callable[[Draw, Any], None], ...] = (
    _set_field, _set_field, _add_attribute, _duplicate_or_drop,
)  # fmt: skip


@st.composite
def mutated_protobuf(draw: Draw, signal: Signal) -> bytes:
    """Fields changed, or bytes, or both: bytes alone mostly test the protobuf parser."""
    corpus = PROTOBUF_CORPUS[signal]
    body = draw(seed(corpus, signal))
    mode = draw(st.sampled_from(("fields", "fields", "bytes", "both")))
    if mode != "bytes":
        request: Any = signal.value.request.FromString(body)
        for _ in range(draw(st.integers(1, 4))):
            draw(st.sampled_from(FIELD_MUTATIONS))(draw, request)
        body = request.SerializeToString()
    if mode != "fields":
        for _ in range(draw(st.integers(1, 3))):
            body = draw(st.sampled_from(BYTE_MUTATIONS))(draw, body, corpus)
    return body


# -- mutating OTLP/JSON ------------------------------------------------------------------

JSON_FIELD_NAMES = (
    "resourceSpans", "resource_spans", "scopeSpans", "spans", "resourceLogs", "scopeLogs",
    "logRecords", "attributes", "events", "links", "status", "code", "message", "key", "value",
    "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue", "arrayValue",
    "kvlistValue", "values", "traceId", "spanId", "parentSpanId", "body", "severityNumber",
)  # fmt: skip
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    _edgy_int(-(2**70), 2**70) | st.sampled_from((2**63, 2**64, -(2**63) - 1, 10**30)),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(JSON_FIELD_NAMES) | st.text(max_size=6), inner, max_size=3
        )
    ),
    max_leaves=6,
)
WRONG_IDS = (
    "", "0" * 32, "0" * 16, "AB" * 16, "ab" * 15, "ab" * 17, "a" * 31, "zz" * 16, "ab" * 8,
    " " + "ab" * 16, "ab " * 16, "ab\n" * 8, "\uff21\uff22" * 16, "q83vEjRWeJA=", "-1",
    "0x" + "ab" * 15,
)  # fmt: skip
wrong_id = st.one_of(
    st.sampled_from(WRONG_IDS),
    st.binary(max_size=20).map(bytes.hex),
    st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()),
    json_value,
)


def _slots(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of the document, its root left out."""
    slots, stack = [], [document]
    while stack:
        node = stack.pop()
        for key in list(node) if isinstance(node, dict) else range(len(node)):
            slots.append((node, key))
            if isinstance(node[key], dict | list):
                stack.append(node[key])
    return slots


def _wrap(draw: Draw, value: Any) -> Any:
    """`value` nested inside arrays or AnyValue arrays, up to a few hundred levels deep."""
    depth = draw(st.integers(1, 200))
    if draw(st.booleans()):
        for _ in range(depth):
            value = [value]
        return value
    for _ in range(depth // 3):
        value = {"arrayValue": {"values": [value]}}
    return value


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _mutate_json(draw: Draw, document: Any) -> None:
    slots = _slots(document)
    if not slots:
        return
    ids = [(node, key) for node, key in slots if key in _ID_KEYS]
    lists = [
        node[key] for node, key in slots if key == "attributes" and isinstance(node[key], list)
    ]
    operations = ("replace", "delete", "nest", "twice", "rename", "id", "id", "attribute")
    operation = draw(st.sampled_from(operations))
    if operation == "attribute" and lists:
        value = {"stringValue": draw(odd_text)}
        draw(st.sampled_from(lists)).append({"key": draw(attribute_key), "value": value})
        return
    node, key = draw(st.sampled_from(ids if operation == "id" and ids else slots))
    if operation in ("replace", "id", "attribute"):
        node[key] = draw(wrong_id if key in _ID_KEYS else json_value)
    elif operation == "delete":
        del node[key]
    elif operation == "nest":
        node[key] = _wrap(draw, node[key])
    elif isinstance(node, list):
        node.append(node[key])  # "twice" or "rename" of an element: the element twice
    elif operation == "rename":
        node[draw(st.just(_snake(key)) | st.sampled_from(JSON_FIELD_NAMES))] = node.pop(key)
    else:
        node[_snake(key)] = node[key]  # the same field under both of its names


@st.composite
def mutated_json(draw: Draw, signal: Signal) -> bytes:
    document = orjson.loads(draw(seed(JSON_CORPUS[signal], signal)))
    for _ in range(draw(st.integers(1, 4))):
        _mutate_json(draw, document)
    # The standard library: it writes integers past 64 bits, which orjson will not.
    return json.dumps(document).encode()


# -- compressed bodies ---------------------------------------------------------------------


def _compress(body: bytes, encoding: str) -> bytes:
    return gzip.compress(body, mtime=0) if encoding == "gzip" else zlib.compress(body)


def protobuf_bodies(signal: Signal) -> st.SearchStrategy[Body]:
    return mutated_protobuf(signal).map(lambda content: Body(content, Format.PROTOBUF))


def json_bodies(signal: Signal) -> st.SearchStrategy[Body]:
    return mutated_json(signal).map(lambda content: Body(content, Format.JSON))


@st.composite
def compressed(draw: Draw, signal: Signal) -> Body:
    fmt = draw(st.sampled_from(Format))
    plain = mutated_protobuf(signal) if fmt is Format.PROTOBUF else mutated_json(signal)
    corpus = PROTOBUF_CORPUS[signal] if fmt is Format.PROTOBUF else JSON_CORPUS[signal]
    content = draw(st.sampled_from(corpus) | plain)
    encoding = draw(st.sampled_from(("gzip", "deflate")))
    wire = _compress(content, encoding)
    damage = draw(st.sampled_from(("none", "truncate", "flip", "garbage", "twice")))
    if damage == "truncate":
        wire = _truncate(draw, wire, ())
    elif damage == "flip":
        wire = _flip(draw, wire, ())
    elif damage == "garbage":
        wire += draw(st.binary(min_size=1, max_size=16))
    elif damage == "twice":
        wire += _compress(draw(st.sampled_from(corpus)), encoding)
    header = draw(
        st.sampled_from((encoding, encoding.upper(), f" {encoding} ", "identity", ""))
        | st.sampled_from(("x-gzip", "br", "zstd", "gzip, identity", "gzip;q=1"))
    )
    return Body(wire, fmt, header)


def wire_body(signal: Signal) -> st.SearchStrategy[Body]:
    """Any of the above, as a client would send it."""
    return st.one_of(protobuf_bodies(signal), json_bodies(signal), compressed(signal))


# -- 1-3: the decoders ---------------------------------------------------------------------


def test_the_corpus_decodes_whole() -> None:
    """The seeds themselves: every item becomes a row."""
    for signal in Signal:
        for body in PROTOBUF_CORPUS[signal]:
            rows = decode_export(body, Format.PROTOBUF, "", LIMITS, "fuzz", signal)
            assert (rows.count, rows.rejected) == (_protobuf_items(body, signal), 0)
            assert_rows_hold(rows, signal, rows.count)
        for body in JSON_CORPUS[signal]:
            rows = decode_export(body, Format.JSON, "", LIMITS, "fuzz", signal)
            assert (rows.count, rows.rejected) == (_json_items(body, signal), 0)


@SIGNALS
@pytest.mark.parametrize(
    "bodies", [protobuf_bodies, json_bodies, compressed], ids=["protobuf", "json", "compressed"]
)
def test_mutated_bodies_decode_or_are_a_decode_error(
    bodies: Callable[[Signal], st.SearchStrategy[Body]], signal: Signal
) -> None:
    @FUZZ
    @given(body=bodies(signal))
    def check(body: Body) -> None:
        decodes_or_refuses(body, signal)

    check()


# -- 4: the mapping --------------------------------------------------------------------------

EVENT_NAMES = (
    "exception", "gen_ai.choice", "gen_ai.user.message", "gen_ai.system.message",
    "gen_ai.assistant.message", "gen_ai.tool.message", "gen_ai.client.inference.operation.details",
)  # fmt: skip
EVENT_KEYS = ("exception.type", "exception.message", "content", "role", "index", "message",
              "gen_ai.input.messages", "gen_ai.output.messages")  # fmt: skip
attributes = st.dictionaries(attribute_key, odd_text, max_size=12)
span_facts = st.builds(
    SpanFacts,
    name=odd_text,
    parent_span_id=st.sampled_from(("", "0" * 16, ROOT.hex())),
    status_code=st.sampled_from(("Unset", "Ok", "Error")) | st.text(max_size=5),
    status_message=odd_text,
    attributes=attributes,
    events=st.lists(
        st.tuples(
            st.sampled_from(EVENT_NAMES) | st.text(max_size=8),
            st.dictionaries(st.sampled_from(EVENT_KEYS) | attribute_key, odd_text, max_size=4),
        ),
        max_size=4,
    ),
    resource=st.dictionaries(st.sampled_from(("service.name", "service.version")), odd_text),
)


def _within(text: str, size: int, limit: int) -> bool:
    """`bounded`'s promise: whole when it fits, else cut with the marker."""
    if size <= limit:
        return len(text.encode()) == size
    return text.endswith(TRUNCATION_MARKER.format(size=size))


@FUZZ
@given(facts=span_facts, limit=st.sampled_from((0, 16, 1024)), pending=st.booleans())
def test_mapping_is_total(facts: SpanFacts, limit: int, pending: bool) -> None:
    step = map_span(facts, price, limit, pending=pending)

    assert step.kind in set(StepKind)
    assert step.status in set(Status)
    assert (step.status == Status.RUNNING) == pending == bool(step.pending)
    for tokens in (step.input_tokens, step.output_tokens, step.total_tokens):
        assert 0 <= tokens < 2**64, tokens  # UInt64 columns
    assert _within(step.input, step.input_bytes, limit)
    assert _within(step.output, step.output_bytes, limit)


# -- 5: end to end, against a real server --------------------------------------------------

_PATHS = {Signal.TRACES: "/v1/traces", Signal.LOGS: "/v1/logs"}
_MEDIA = {Format.PROTOBUF: PROTOBUF, Format.JSON: JSON}


def _post(server: RunningServer, signal: Signal, body: Body) -> httpx.Response:
    headers = {"Content-Type": _MEDIA[body.fmt]}
    if body.encoding.strip():  # httpx sends no header with spaces around its value
        headers["Content-Encoding"] = body.encoding.strip()
    # A new connection per request: the server may close one after an error answer.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.http_base, timeout=30, limits=limits) as client:
        return client.post(_PATHS[signal], content=body.content, headers=headers)


def test_mutated_exports_are_never_a_server_error(server: RunningServer) -> None:
    @FUZZ_SERVER
    @given(traces=wire_body(Signal.TRACES), logs=wire_body(Signal.LOGS))
    def post(traces: Body, logs: Body) -> None:
        for signal, body in ((Signal.TRACES, traces), (Signal.LOGS, logs)):
            response = _post(server, signal, body)
            assert response.status_code in (200, 400, 413, 415), (
                signal.name,
                response.status_code,
                response.text[:500],
            )

    post()
    assert httpx.get(f"{server.http_base}/healthz", timeout=30).status_code == 200
    for signal in Signal:
        good = Body(PROTOBUF_CORPUS[signal][-1], Format.PROTOBUF)
        response = _post(server, signal, good)
        assert response.status_code == 200, response.text
        assert b"partial" not in response.content  # no partial_success: nothing left out


# -- found by the fuzzing above: kept failing until the collector is fixed ---------------


def _log_with_chunk_index(index: str) -> bytes:
    request = otlp_logs_service.ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    chunk = [_text("tracehouse.chunk.channel", "output"), _text("tracehouse.chunk.index", index)]
    records.add(trace_id=TRACE, span_id=ROOT, attributes=chunk)
    return request.SerializeToString()


@pytest.mark.parametrize("index", ["²", "--5", "-²"])
def test_a_chunk_index_that_is_not_a_number_is_index_0(index: str) -> None:
    """logs.py `_index`: `str.isdigit` holds for "²", and `lstrip("-")` lets "--5" by."""
    request = otlp_logs_service.ExportLogsServiceRequest.FromString(_log_with_chunk_index(index))
    rows = log_rows(request, "fuzz")
    assert rows.columns[WRITTEN_LOG_COLUMNS.index("ChunkIndex")] == [0]


@pytest.mark.parametrize(
    "attributes",
    [
        {"gen_ai.prompt.0.content": _nested(300)},
        {"gen_ai.prompt." + "0." * 300 + "content": "hi"},
        {"llm.input_messages." + "0." * 3000 + "content": "hi"},
        {"gen_ai.prompt.²": "hi"},
        {"gen_ai.input.messages": "[]", "gen_ai.system_instructions": _nested(300)},
    ],
    ids=["deep-value", "deep-key", "very-deep-key", "superscript-index", "deep-instructions"],
)
def test_mapping_reads_hostile_flattened_messages(attributes: dict[str, str]) -> None:
    facts = SpanFacts("chat", "", "Unset", "", attributes, [], {})
    step = map_span(facts, price, 1024)
    assert step.kind == StepKind.SPAN


def test_a_deep_message_event_maps() -> None:
    events = [("gen_ai.user.message", {"content": _nested(300)})]
    step = map_span(SpanFacts("chat", "", "Unset", "", {}, events, {}), price, 1024)
    assert step.input.startswith('[{"role":"user"')


def test_link_ids_of_the_wrong_length_are_not_stored() -> None:
    """spans.py stores `link.trace_id.hex()` unchecked: a 3-byte id becomes a run's link."""
    request = _handmade_traces()
    request.resource_spans[0].scope_spans[0].spans[0].links[0].trace_id = b"\x03" * 3
    rows = decode_export(request.SerializeToString(), Format.PROTOBUF, "", LIMITS, "fuzz")
    assert_rows_hold(rows, Signal.TRACES, 3)


def test_a_pending_span_under_a_zero_parent_id_keeps_a_valid_span_id() -> None:
    """mapping.py `pending_ids` takes the parent id as the announced span's id, zeros and all."""
    request = _handmade_traces()
    request.resource_spans[0].scope_spans[0].spans[2].parent_span_id = bytes(8)
    rows = decode_export(request.SerializeToString(), Format.PROTOBUF, "", LIMITS, "fuzz")
    assert_rows_hold(rows, Signal.TRACES, 3)


def _one_span(**fields: Any) -> bytes:
    request = otlp_trace_service.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=TRACE, span_id=ROOT, name="chat", start_time_unix_nano=T0, **fields)
    return request.SerializeToString()


def _one_record(**fields: Any) -> bytes:
    request = otlp_logs_service.ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add(time_unix_nano=T0, **fields)
    return request.SerializeToString()


CHAT = [_text("gen_ai.operation.name", "chat"), _text("gen_ai.request.model", "gpt-4o")]
LINKS = [otlp.Span.Link(trace_id=TRACE, span_id=TOOL)] * (LIMITS.max_links + 1)


@pytest.mark.parametrize(
    ("signal", "body"),
    [
        (Signal.TRACES, _one_span(attributes=[*CHAT, _text("gen_ai.usage.input_tokens", "1e30")])),
        (Signal.TRACES, _one_span(attributes=[*CHAT, _text("llm.token_count.total", "2e19")])),
        (Signal.TRACES, _one_span(links=LINKS, dropped_links_count=2**32 - 1)),
        (Signal.LOGS, _one_record(severity_number=-1)),
    ],
    ids=["input-tokens-1e30", "total-tokens-2e19", "dropped-links-past-uint32", "severity-minus-1"],
)
def test_numbers_sent_out_of_range_fit_their_columns(signal: Signal, body: bytes) -> None:
    """Else the insert fails, and the export is answered 503 (retry) for as long as it is sent."""
    rows = decode_export(body, Format.PROTOBUF, "", LIMITS, "fuzz", signal)
    assert_rows_hold(rows, signal, 1)


def test_gzip_members_after_the_first_are_not_silently_dropped() -> None:
    """RFC 1952: a gzip body may hold several members; all of it is the payload."""
    first, second = (m.SerializeToString() for m in _LOG_MESSAGES)
    body = gzip.compress(first) + gzip.compress(second)
    rows = decode_export(body, Format.PROTOBUF, "gzip", LIMITS, "fuzz", Signal.LOGS)
    assert rows.count == _protobuf_items(first + second, Signal.LOGS)

"""The span row contract shared by the collector (which writes it) and the query API.

One row per span, its columns named as in the OpenTelemetry Collector's
ClickHouse exporter (`otel_traces`), so existing ClickHouse tooling reads
them. Attribute maps hold every value as text, the way that exporter does;
the sparse `AttributeTypes` map records the OTLP type of every value that is
not a plain string, which makes the row lossless: `decode_value` turns text
and type back into the value that was sent.

`AttributeTypes` keys are `<scope>.<attribute key>` where scope is `s`
(span), `r` (resource), `c` (instrumentation scope), `e<i>` (event i) or
`l<i>` (link i).
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

import orjson


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    # Mapped columns are filled by the semantic mapping; until it knows a
    # value the column's DEFAULT stands.
    default: str | None = None
    codec: str | None = None
    mapped: bool = False  # filled by the mapping, not read off the span


class ValueType(enum.StrEnum):
    """How a non-string attribute value is written as text."""

    BOOL = "bool"  # `true` / `false`
    INT = "int"  # decimal
    DOUBLE = "double"  # Python repr: shortest text that reads back the same float
    BYTES = "bytes"  # standard base64
    ARRAY = "array"  # JSON array of plain values
    KVLIST = "kvlist"  # JSON object of plain values
    # An array or kvlist holding bytes or a non-finite double, which plain
    # JSON cannot carry: the OTLP/JSON encoding of the AnyValue.
    ANY = "any"
    EMPTY = "empty"  # an AnyValue with no value set; written as ""


ZSTD = "ZSTD(1)"

# Where a span or log record comes from: its resource and scope.
ORIGIN_COLUMNS: tuple[Column, ...] = (
    Column("ServiceName", "LowCardinality(String)"),
    Column("ResourceAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("ResourceSchemaUrl", "LowCardinality(String)"),
    Column("ScopeName", "LowCardinality(String)"),
    Column("ScopeVersion", "LowCardinality(String)"),
    Column("ScopeAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("ScopeSchemaUrl", "LowCardinality(String)"),
)

SPAN_COLUMNS: tuple[Column, ...] = (
    Column("ProjectId", "LowCardinality(String)"),
    Column("Timestamp", "DateTime64(9)", codec="Delta, ZSTD(1)"),
    Column("TraceId", "String"),
    Column("SpanId", "String"),
    Column("ParentSpanId", "String"),
    Column("TraceState", "String"),
    Column("SpanName", "LowCardinality(String)"),
    Column("SpanKind", "LowCardinality(String)"),
    *ORIGIN_COLUMNS,
    Column("SpanAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("AttributeTypes", "Map(LowCardinality(String), LowCardinality(String))", codec=ZSTD),
    Column("Duration", "UInt64", codec=ZSTD),
    Column("StatusCode", "LowCardinality(String)"),
    Column("StatusMessage", "String", codec=ZSTD),
    Column("Flags", "UInt32"),
    Column("DroppedAttributesCount", "UInt32"),
    Column("DroppedEventsCount", "UInt32"),
    Column("DroppedLinksCount", "UInt32"),
    # The span's place in its export request. SDKs export spans in the order
    # they ended, which orders steps whose clocks tie (the JS SDK starts
    # spans on whole milliseconds).
    Column("SpanIndex", "UInt32"),
    # What the collector had to change of the span as sent (attributes,
    # events or links dropped over the limits, values cut) or doubts about it
    # (its clock): shown with its step.
    Column("Warnings", "Array(LowCardinality(String))"),
    Column("Events.Timestamp", "Array(DateTime64(9))", codec=ZSTD),
    Column("Events.Name", "Array(LowCardinality(String))", codec=ZSTD),
    Column("Events.Attributes", "Array(Map(LowCardinality(String), String))", codec=ZSTD),
    Column("Links.TraceId", "Array(String)", codec=ZSTD),
    Column("Links.SpanId", "Array(String)", codec=ZSTD),
    Column("Links.TraceState", "Array(String)", codec=ZSTD),
    Column("Links.Attributes", "Array(Map(LowCardinality(String), String))", codec=ZSTD),
    # Mapped run/step columns (DESIGN.md §3), filled by collector.mapping.
    Column("StepKind", "LowCardinality(String)", default="''", mapped=True),
    Column("StepName", "String", default="''", mapped=True),
    Column("StepStatus", "LowCardinality(String)", default="''", mapped=True),
    Column("Model", "LowCardinality(String)", default="''", mapped=True),
    Column("InputTokens", "UInt64", default="0", mapped=True),
    Column("OutputTokens", "UInt64", default="0", mapped=True),
    Column("TotalTokens", "UInt64", default="0", mapped=True),
    Column("CostUsd", "Nullable(Float64)", default="NULL", mapped=True),
    Column("ErrorType", "String", default="''", mapped=True),
    Column("ErrorMessage", "String", default="''", codec=ZSTD, mapped=True),
    # Input and output (a tool's args and result), whole up to the size limit;
    # their *Bytes are the sizes as sent, larger than the text when it was cut.
    Column("Input", "String", default="''", codec="ZSTD(3)", mapped=True),
    Column("Output", "String", default="''", codec="ZSTD(3)", mapped=True),
    Column("InputBytes", "UInt64", default="0", mapped=True),
    Column("OutputBytes", "UInt64", default="0", mapped=True),
    Column("Trigger", "LowCardinality(String)", default="''", mapped=True),
    Column("Version", "LowCardinality(String)", default="''", mapped=True),
    Column("SessionId", "String", default="''", mapped=True),
    # A pending span (DESIGN.md §3 "Live"), stored under the id of the span
    # it announces: 1 until that span itself arrives as a row with 0. Part of
    # the sorting key, so each keeps its own row and reads prefer the 0.
    Column("Pending", "UInt8", mapped=True),
    # When the row reached ClickHouse: the live tail reads by it.
    Column("IngestedAt", "DateTime64(6)", default="now64(6)"),
)

SPANS_TABLE = "spans"

# What the collector's decoder fills, in this order: the span as sent...
RAW_SPAN_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in SPAN_COLUMNS if not c.mapped and c.default is None
)
# ...then what the mapping makes of it.
MAPPED_SPAN_COLUMNS: tuple[str, ...] = tuple(c.name for c in SPAN_COLUMNS if c.mapped)
WRITTEN_SPAN_COLUMNS = RAW_SPAN_COLUMNS + MAPPED_SPAN_COLUMNS


RUNS_TABLE = "runs"

# OTLP log records, named as the OpenTelemetry Collector's `otel_logs`. Those
# linked to a span are that step's events; text chunks streamed by the
# client helper (`tracehouse.chunk.*` attributes) are its live output.
LOG_COLUMNS: tuple[Column, ...] = (
    Column("ProjectId", "LowCardinality(String)"),
    Column("Timestamp", "DateTime64(9)", codec="Delta, ZSTD(1)"),
    Column("ObservedTimestamp", "DateTime64(9)", codec="Delta, ZSTD(1)"),
    Column("TraceId", "String"),
    Column("SpanId", "String"),
    Column("TraceFlags", "UInt32"),
    Column("SeverityText", "LowCardinality(String)"),
    Column("SeverityNumber", "UInt8"),
    Column("Body", "String", codec="ZSTD(3)"),
    Column("EventName", "LowCardinality(String)"),
    *ORIGIN_COLUMNS,
    Column("LogAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    # As for spans; the body's own type, when not a string, is under `b`.
    Column("AttributeTypes", "Map(LowCardinality(String), LowCardinality(String))", codec=ZSTD),
    Column("DroppedAttributesCount", "UInt32"),
    # A streamed chunk: its channel (`output` or `reasoning`; '' for any
    # other record) and its place in the span's stream.
    Column("Channel", "LowCardinality(String)", mapped=True),
    Column("ChunkIndex", "UInt32", mapped=True),
    Column("IngestedAt", "DateTime64(6)", default="now64(6)"),
)

LOGS_TABLE = "logs"
WRITTEN_LOG_COLUMNS: tuple[str, ...] = tuple(c.name for c in LOG_COLUMNS if c.default is None)

# The live formats the collector reads and the client helper writes.
# A streamed chunk: a log record linked to its span, with these attributes.
CHUNK_CHANNELS = ("output", "reasoning")
CHUNK_EVENT = "tracehouse.chunk"
CHUNK_CHANNEL_KEY = "tracehouse.chunk.channel"
CHUNK_INDEX_KEY = "tracehouse.chunk.index"
# A pending span (Logfire's format): these attributes, the second naming the
# announced span's parent, all zeros for a root.
PENDING_TYPE_KEY = "logfire.span_type"
PENDING_SPAN_TYPE = "pending_span"
PENDING_PARENT_KEY = "logfire.pending_parent_id"
PENDING_NO_PARENT = "0" * 16

# The root span's facts, as tuples: the runs table keeps the tuple of the
# span with the highest `seen` (see below). What
# lists filter, sort and count on is kept apart from the wide rest, so a
# list of a million runs reads only the narrow part.
#
# `seen` of the root: 0 while it has not arrived, 1 for its pending span
# (started, not ended), 2 for the span itself.
ROOT_KEY_TUPLE = (
    "Tuple(seen UInt8, span_id String, name String, kind String, status String, "
    "trigger String, version String, session_id String, link_span String)"
)
ROOT_DETAIL_TUPLE = (
    "Tuple(seen UInt8, end DateTime64(9), error_type String, error_message String, "
    "input String, output String, model String, input_tokens UInt64, output_tokens UInt64, "
    "total_tokens UInt64, link_trace String)"
)

# One row per trace and insert block, folded by AggregatingMergeTree with
# functions that give the same answer whatever the order and however often a
# span is written (min, max, set union): a trace's top-level run, whatever
# order its spans arrive in. Filled by a materialized view over `spans`.
RUN_COLUMNS: tuple[Column, ...] = (
    Column("ProjectId", "LowCardinality(String)"),
    Column("TraceId", "String"),
    Column("Start", "SimpleAggregateFunction(min, DateTime64(9))"),
    Column("LastSeen", "SimpleAggregateFunction(max, DateTime64(6))"),
    # The earliest span seen: while the root is missing, its parent is the
    # root's id and its name stands in for the run's.
    Column("Topmost", "SimpleAggregateFunction(min, Tuple(DateTime64(9), String, String))"),
    Column("RootKey", f"SimpleAggregateFunction(max, {ROOT_KEY_TUPLE})"),
    Column("RootDetail", f"SimpleAggregateFunction(max, {ROOT_DETAIL_TUPLE})"),
    Column("Service", "SimpleAggregateFunction(max, String)"),
    # Parents of failed steps, and of failed agent/workflow steps: a run whose
    # root never came, or whose wrapper root hides a failed agent, failed.
    Column("FailedParents", "SimpleAggregateFunction(groupUniqArrayArray, Array(String))"),
    Column("FailedAgentParents", "SimpleAggregateFunction(groupUniqArrayArray, Array(String))"),
    # (0, start, input) of the first LLM step; (1, end, output, model) of the last.
    Column("FirstLlm", "SimpleAggregateFunction(min, Tuple(UInt8, DateTime64(9), String))"),
    Column("LastLlm", "SimpleAggregateFunction(max, Tuple(UInt8, DateTime64(9), String, String))"),
)

PREVIEW_CHARS = 512

# The run list: every trace's top-level run header (but for what it sums over
# its steps), one row per run, kept by the query API (`RunList`): each
# refresh folds the runs that moved in `runs` again, writes their rows anew
# and deletes the rows they replace. A list then reads a granule for a page
# with its headers, and a few narrow columns of every run for its counts,
# instead of folding every run's partial rows. Columns are named as the
# query API names a header's.
RUN_LIST_TABLE = "run_list"
RUN_LIST_COLUMNS: tuple[Column, ...] = (
    # '' for a refresher's mark: when its last complete refresh began.
    Column("ProjectId", "LowCardinality(String)"),
    Column("trace_id", "String"),
    Column("run_id", "String"),
    Column("name", "String"),
    Column("kind", "LowCardinality(String)"),
    Column("status", "LowCardinality(String)"),
    Column("trigger", "LowCardinality(String)"),
    Column("version", "LowCardinality(String)"),
    Column("session_id", "String"),
    Column("started_ns", "Int64"),
    Column("link_span", "String"),
    Column("is_sub_run", "UInt8"),
    Column("root_seen", "UInt8"),
    Column("service", "LowCardinality(String)"),
    Column("ended_ns", "Nullable(Int64)"),
    Column("own_tokens", "Tuple(UInt64, UInt64, UInt64)"),
    Column("model", "LowCardinality(String)"),
    Column("error", "Tuple(String, String)"),
    Column("input_preview", "String", codec="ZSTD(1)"),
    Column("output_preview", "String", codec="ZSTD(1)"),
    Column("link_trace", "String"),
    Column("last_seen_ns", "Int64"),
    Column("last_seen", "DateTime64(6)"),  # the same moment, for the retention's TTL
    Column("folded_at", "DateTime64(6)"),  # when a refresh read it: the newest row stands
)


class StepKind(enum.StrEnum):
    AGENT = "agent"
    WORKFLOW = "workflow"
    LLM = "llm"
    TOOL = "tool"
    RETRIEVER = "retriever"
    EMBEDDING = "embedding"
    CHAIN = "chain"
    NODE = "node"
    GUARDRAIL = "guardrail"
    EVALUATOR = "evaluator"
    HANDOFF = "handoff"
    SPAN = "span"


RUN_KINDS = frozenset({StepKind.AGENT, StepKind.WORKFLOW})


class Status(enum.StrEnum):
    """What happened to a run or a step."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


STATUS_CODES = ("Unset", "Ok", "Error")
SPAN_KINDS = ("Unspecified", "Internal", "Server", "Client", "Producer", "Consumer")


def decode_value(text: str, value_type: str | None) -> Any:
    """The attribute value that was sent, from its stored text and type tag.

    Bytes come back as `bytes`; arrays as lists and kvlists as dicts of the
    same kinds of values.
    """
    if value_type is None:
        return text
    tag = ValueType(value_type)
    match tag:
        case ValueType.BOOL:
            return text == "true"
        case ValueType.INT:
            return int(text)
        case ValueType.DOUBLE:
            return float(text)
        case ValueType.BYTES:
            return base64.b64decode(text)
        case ValueType.ARRAY | ValueType.KVLIST:
            return orjson.loads(text)
        case ValueType.ANY:
            return _from_otlp_json(orjson.loads(text))
        case ValueType.EMPTY:
            return None
        case _:
            assert_never(tag)


def decode_attributes(
    values: Mapping[str, str], types: Mapping[str, str], scope: str
) -> dict[str, Any]:
    """One attribute map of a row, typed again (`scope` as in `AttributeTypes` keys)."""
    prefix = f"{scope}."
    return {key: decode_value(text, types.get(prefix + key)) for key, text in values.items()}


_OTLP_SCALARS: dict[str, Callable[[Any], Any]] = {
    "stringValue": str,
    "boolValue": bool,
    "intValue": int,
    "doubleValue": float,
    "bytesValue": base64.b64decode,
}


def _from_otlp_json(value: Mapping[str, Any]) -> Any:
    """A plain value from an OTLP/JSON AnyValue object."""
    for key, convert in _OTLP_SCALARS.items():
        if key in value:
            return convert(value[key])
    if "arrayValue" in value:
        return [_from_otlp_json(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {
            # protobuf's JSON leaves out an empty key
            kv.get("key", ""): _from_otlp_json(kv.get("value", {}))
            for kv in value["kvlistValue"].get("values", [])
        }
    return None

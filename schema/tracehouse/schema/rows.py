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

SPAN_COLUMNS: tuple[Column, ...] = (
    Column("ProjectId", "LowCardinality(String)"),
    Column("Timestamp", "DateTime64(9)", codec="Delta, ZSTD(1)"),
    Column("TraceId", "String"),
    Column("SpanId", "String"),
    Column("ParentSpanId", "String"),
    Column("TraceState", "String"),
    Column("SpanName", "LowCardinality(String)"),
    Column("SpanKind", "LowCardinality(String)"),
    Column("ServiceName", "LowCardinality(String)"),
    Column("ResourceAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("ResourceSchemaUrl", "LowCardinality(String)"),
    Column("ScopeName", "LowCardinality(String)"),
    Column("ScopeVersion", "LowCardinality(String)"),
    Column("ScopeAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("ScopeSchemaUrl", "LowCardinality(String)"),
    Column("SpanAttributes", "Map(LowCardinality(String), String)", codec=ZSTD),
    Column("AttributeTypes", "Map(LowCardinality(String), LowCardinality(String))", codec=ZSTD),
    Column("Duration", "UInt64", codec=ZSTD),
    Column("StatusCode", "LowCardinality(String)"),
    Column("StatusMessage", "String", codec=ZSTD),
    Column("Flags", "UInt32"),
    Column("DroppedAttributesCount", "UInt32"),
    Column("DroppedEventsCount", "UInt32"),
    Column("DroppedLinksCount", "UInt32"),
    Column("Events.Timestamp", "Array(DateTime64(9))", codec=ZSTD),
    Column("Events.Name", "Array(LowCardinality(String))", codec=ZSTD),
    Column("Events.Attributes", "Array(Map(LowCardinality(String), String))", codec=ZSTD),
    Column("Links.TraceId", "Array(String)", codec=ZSTD),
    Column("Links.SpanId", "Array(String)", codec=ZSTD),
    Column("Links.TraceState", "Array(String)", codec=ZSTD),
    Column("Links.Attributes", "Array(Map(LowCardinality(String), String))", codec=ZSTD),
    # Mapped run/step columns (DESIGN.md §3), filled by the semantic mapping.
    Column("StepKind", "LowCardinality(String)", default="''"),
    Column("StepName", "String", default="''"),
    Column("Model", "LowCardinality(String)", default="''"),
    Column("InputTokens", "UInt64", default="0"),
    Column("OutputTokens", "UInt64", default="0"),
    Column("TotalTokens", "UInt64", default="0"),
    Column("ErrorType", "String", default="''"),
    Column("ErrorMessage", "String", default="''", codec=ZSTD),
    Column("Input", "String", default="''", codec="ZSTD(3)"),
    Column("Output", "String", default="''", codec="ZSTD(3)"),
    # When the row reached ClickHouse: the live tail reads by it.
    Column("IngestedAt", "DateTime64(6)", default="now64(6)"),
)

SPANS_TABLE = "spans"

# What the collector's decoder fills today, in this order.
RAW_SPAN_COLUMNS: tuple[str, ...] = tuple(c.name for c in SPAN_COLUMNS if c.default is None)

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
            kv["key"]: _from_otlp_json(kv.get("value", {}))
            for kv in value["kvlistValue"].get("values", [])
        }
    return None

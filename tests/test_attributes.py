"""Span rows from OTLP requests: attribute values survive the text encoding, bad ids are left out.

Rows store every attribute value as text, as `otel_traces` does, with the
type of each non-string value in the sparse `AttributeTypes` map. The
property tests send arbitrary `AnyValue` trees in every attribute map a span
has and check that `decode_attributes` gives back exactly what was sent.
"""

from __future__ import annotations

import math
from typing import Any, assert_never

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.resource.v1 import resource_pb2 as otlp_resource
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from tracehouse.collector.batcher import Rows
from tracehouse.collector.spans import Mapping, span_rows
from tracehouse.schema.rows import RAW_SPAN_COLUMNS, decode_attributes

TRACE_ID = bytes(range(1, 17))
SPAN_ID = bytes(range(1, 9))
PARENT_ID = bytes(range(9, 17))
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

Attributes = dict[str, otlp_common.AnyValue]


# --- building requests ---------------------------------------------------------------------------


def key_values(attributes: Attributes) -> list[otlp_common.KeyValue]:
    return [otlp_common.KeyValue(key=key, value=value) for key, value in attributes.items()]


def valid_span(name: str = "op", **fields: Any) -> otlp.Span:
    values: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "name": name,
        "start_time_unix_nano": 1_700_000_000_000_000_000,
        "end_time_unix_nano": 1_700_000_000_250_000_000,
    }
    return otlp.Span(**(values | fields))


def request(
    *spans: otlp.Span, resource: Attributes | None = None, scope: Attributes | None = None
) -> otlp_trace.ExportTraceServiceRequest:
    return otlp_trace.ExportTraceServiceRequest(
        resource_spans=[
            otlp.ResourceSpans(
                resource=otlp_resource.Resource(attributes=key_values(resource or {})),
                scope_spans=[
                    otlp.ScopeSpans(
                        scope=otlp_common.InstrumentationScope(
                            name="tests", attributes=key_values(scope or {})
                        ),
                        spans=spans,
                    )
                ],
            )
        ]
    )


def no_price(model: str, provider: str, input_tokens: int, output_tokens: int) -> None:
    return None  # every model unknown: these tests are about the span as sent


def to_rows(spans: otlp_trace.ExportTraceServiceRequest) -> Rows:
    return span_rows(spans, "p", Mapping(no_price, max_value_bytes=1 << 20))


def rows_of(rows: Rows) -> list[dict[str, Any]]:
    """Each span row as a dict of its span-as-sent columns, by name."""
    return [
        {name: row[i] for i, name in enumerate(RAW_SPAN_COLUMNS)}
        for row in zip(*rows.columns, strict=True)
    ]


def only_row(rows: Rows) -> dict[str, Any]:
    (row,) = rows_of(rows)
    return row


# --- what a value should read back as ------------------------------------------------------------


def expected(value: otlp_common.AnyValue) -> Any:
    """The Python value an `AnyValue` stands for: bytes stay bytes, empty is None."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    match which:
        case "string_value":
            return value.string_value
        case "bool_value":
            return value.bool_value
        case "int_value":
            return value.int_value
        case "double_value":
            return value.double_value
        case "bytes_value":
            return value.bytes_value
        case "array_value":
            return [expected(v) for v in value.array_value.values]
        case "kvlist_value":
            return {kv.key: expected(kv.value) for kv in value.kvlist_value.values}
        case "string_value_strindex":
            return None  # profiles only: other signals must read it as absent
        case _:
            assert_never(which)


def comparable(value: Any) -> Any:
    """`value` with its type made explicit, so True != 1 != 1.0, NaN == NaN and -0.0 != 0.0."""
    if isinstance(value, float):
        if math.isnan(value):
            return ("float", "nan")
        return ("float", value, math.copysign(1.0, value))
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return (type(value).__name__, value)


def expected_map(attributes: Attributes) -> Any:
    return comparable({key: expected(value) for key, value in attributes.items()})


def decoded_map(values: dict[str, str], types: dict[str, str], scope: str) -> Any:
    return comparable(decode_attributes(values, types, scope))


# --- arbitrary values ----------------------------------------------------------------------------

# Protobuf strings are UTF-8, so no lone surrogates; anything else goes.
texts = st.text(st.characters(codec="utf-8"), max_size=12)

scalars: st.SearchStrategy[otlp_common.AnyValue] = st.one_of(
    texts.map(lambda s: otlp_common.AnyValue(string_value=s)),
    st.booleans().map(lambda b: otlp_common.AnyValue(bool_value=b)),
    st.integers(-(2**63), INT64_MAX).map(lambda i: otlp_common.AnyValue(int_value=i)),
    st.floats().map(lambda f: otlp_common.AnyValue(double_value=f)),  # nan, ±inf, -0.0 too
    st.binary(max_size=12).map(lambda b: otlp_common.AnyValue(bytes_value=b)),
    st.builds(otlp_common.AnyValue),  # no value set
)


def any_values(depth: int = 4) -> st.SearchStrategy[otlp_common.AnyValue]:
    """Scalars, and arrays and kvlists of any values nested up to `depth` deep."""
    if depth == 0:
        return scalars
    inner = any_values(depth - 1)
    arrays = st.lists(inner, max_size=3).map(
        lambda values: otlp_common.AnyValue(array_value=otlp_common.ArrayValue(values=values))
    )
    kvlists = st.dictionaries(texts, inner, max_size=3).map(
        lambda pairs: otlp_common.AnyValue(
            kvlist_value=otlp_common.KeyValueList(values=key_values(pairs))
        )
    )
    return st.one_of(scalars, arrays, kvlists)


attribute_maps = st.dictionaries(texts, any_values(), max_size=4)


# --- properties ----------------------------------------------------------------------------------


@given(value=any_values())
def test_any_span_attribute_value_reads_back_as_sent(value: otlp_common.AnyValue) -> None:
    row = only_row(to_rows(request(valid_span(attributes=key_values({"k": value})))))

    decoded = decoded_map(row["SpanAttributes"], row["AttributeTypes"], "s")
    assert decoded == expected_map({"k": value})


@given(
    span=attribute_maps,
    resource=attribute_maps,
    scope=attribute_maps,
    events=st.lists(attribute_maps, min_size=1, max_size=2),
    links=st.lists(attribute_maps, min_size=1, max_size=2),
)
def test_every_attribute_map_of_a_span_reads_back_as_sent(
    span: Attributes,
    resource: Attributes,
    scope: Attributes,
    events: list[Attributes],
    links: list[Attributes],
) -> None:
    sent = valid_span(
        attributes=key_values(span),
        events=[
            otlp.Span.Event(name=f"e{i}", attributes=key_values(a)) for i, a in enumerate(events)
        ],
        links=[
            otlp.Span.Link(trace_id=TRACE_ID, span_id=PARENT_ID, attributes=key_values(a))
            for a in links
        ],
    )
    row = only_row(to_rows(request(sent, resource=resource, scope=scope)))
    types = row["AttributeTypes"]

    assert decoded_map(row["SpanAttributes"], types, "s") == expected_map(span)
    assert decoded_map(row["ResourceAttributes"], types, "r") == expected_map(resource)
    assert decoded_map(row["ScopeAttributes"], types, "c") == expected_map(scope)
    stored_events = row["Events.Attributes"]
    assert [decoded_map(m, types, f"e{i}") for i, m in enumerate(stored_events)] == [
        expected_map(a) for a in events
    ]
    stored_links = row["Links.Attributes"]
    assert [decoded_map(m, types, f"l{i}") for i, m in enumerate(stored_links)] == [
        expected_map(a) for a in links
    ]


# --- how values are stored -----------------------------------------------------------------------


def stored(value: otlp_common.AnyValue) -> tuple[str, str | None]:
    """The text and type tag a span attribute `k` holding `value` is stored as."""
    row = only_row(to_rows(request(valid_span(attributes=key_values({"k": value})))))
    return row["SpanAttributes"]["k"], row["AttributeTypes"].get("s.k")


def test_string_values_are_stored_as_is_with_no_type_entry() -> None:
    spans = request(
        valid_span(
            attributes=key_values({"http.method": otlp_common.AnyValue(string_value="GET")})
        ),
        resource={"service.name": otlp_common.AnyValue(string_value="checkout")},
    )
    row = only_row(to_rows(spans))

    assert row["SpanAttributes"] == {"http.method": "GET"}
    assert row["ResourceAttributes"] == {"service.name": "checkout"}
    assert row["ServiceName"] == "checkout"
    assert row["AttributeTypes"] == {}


@pytest.mark.parametrize(
    ("value", "text", "tag"),
    [
        (otlp_common.AnyValue(int_value=42), "42", "int"),
        (otlp_common.AnyValue(int_value=-(2**63)), "-9223372036854775808", "int"),
        (otlp_common.AnyValue(bool_value=True), "true", "bool"),
        (otlp_common.AnyValue(bool_value=False), "false", "bool"),
        (otlp_common.AnyValue(double_value=0.1), "0.1", "double"),
        (otlp_common.AnyValue(bytes_value=b"\x00\xff"), "AP8=", "bytes"),
        (otlp_common.AnyValue(), "", "empty"),
    ],
    ids=["int", "int64-min", "true", "false", "double", "bytes", "empty"],
)
def test_scalar_values_are_stored_as_text_with_their_type(
    value: otlp_common.AnyValue, text: str, tag: str
) -> None:
    assert stored(value) == (text, tag)


def test_arrays_and_kvlists_of_plain_values_are_stored_as_json() -> None:
    array = otlp_common.AnyValue(
        array_value=otlp_common.ArrayValue(
            values=[otlp_common.AnyValue(int_value=1), otlp_common.AnyValue(string_value="a")]
        )
    )
    kvlist = otlp_common.AnyValue(
        kvlist_value=otlp_common.KeyValueList(
            values=key_values({"ok": otlp_common.AnyValue(bool_value=True)})
        )
    )

    assert stored(array) == ('[1,"a"]', "array")
    assert stored(kvlist) == ('{"ok":true}', "kvlist")


def test_kvlist_with_an_empty_key_and_bytes_reads_back_as_sent() -> None:
    # OTLP/JSON leaves out a KeyValue's key when it is "", the default.
    value = otlp_common.AnyValue(
        kvlist_value=otlp_common.KeyValueList(
            values=key_values({"": otlp_common.AnyValue(bytes_value=b"x")})
        )
    )
    row = only_row(to_rows(request(valid_span(attributes=key_values({"k": value})))))

    assert decode_attributes(row["SpanAttributes"], row["AttributeTypes"], "s") == {"k": {"": b"x"}}


@pytest.mark.parametrize(
    ("value", "reads_as"),
    [
        (otlp_common.AnyValue(string_value_strindex=3), None),
        (
            otlp_common.AnyValue(
                array_value=otlp_common.ArrayValue(
                    values=[otlp_common.AnyValue(string_value_strindex=3)]
                )
            ),
            [None],
        ),
    ],
    ids=["attribute", "in-array"],
)
def test_profiles_string_index_is_read_as_absent_not_a_failed_export(
    value: otlp_common.AnyValue, reads_as: Any
) -> None:
    # OTLP: receivers of other signals treat `string_value_strindex` as absent, non-fatally.
    rows = to_rows(request(valid_span(attributes=key_values({"k": value}))))
    row = only_row(rows)

    assert decode_attributes(row["SpanAttributes"], row["AttributeTypes"], "s") == {"k": reads_as}


def test_repeated_attribute_key_keeps_the_last_value_and_its_type() -> None:
    # OTLP asks senders for unique keys; a row must still read back as one of them.
    pairs = [
        otlp_common.KeyValue(key="k", value=otlp_common.AnyValue(int_value=1)),
        otlp_common.KeyValue(key="k", value=otlp_common.AnyValue(string_value="x")),
    ]
    row = only_row(to_rows(request(valid_span(attributes=pairs))))

    assert decode_attributes(row["SpanAttributes"], row["AttributeTypes"], "s") == {"k": "x"}


# --- spans OTLP says must not be accepted --------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"trace_id": bytes(range(1, 9))}, "trace_id must be 16 bytes and not all zero"),
        ({"trace_id": bytes(16)}, "trace_id must be 16 bytes and not all zero"),
        ({"span_id": bytes(range(1, 5))}, "span_id must be 8 bytes and not all zero"),
        ({"span_id": bytes(8)}, "span_id must be 8 bytes and not all zero"),
        ({"parent_span_id": bytes(range(1, 4))}, "parent_span_id must be empty or 8 bytes"),
    ],
    ids=["8-byte-trace-id", "zero-trace-id", "4-byte-span-id", "zero-span-id", "3-byte-parent"],
)
def test_span_with_a_bad_id_is_rejected_and_the_valid_spans_kept(
    fields: dict[str, bytes], problem: str
) -> None:
    spans = request(
        valid_span("before", span_id=bytes(range(1, 9))),
        valid_span("bad", **fields),
        valid_span("after", span_id=bytes(range(2, 10)), parent_span_id=PARENT_ID),
    )
    rows = to_rows(spans)

    assert (rows.count, rows.rejected) == (2, 1)
    assert rows.error == f"span 'bad': {problem}"
    assert [row["SpanName"] for row in rows_of(rows)] == ["before", "after"]
    assert [row["SpanId"] for row in rows_of(rows)] == ["0102030405060708", "0203040506070809"]


def test_every_rejected_span_is_counted_and_the_first_problem_reported() -> None:
    spans = request(
        valid_span("no-trace", trace_id=b""),
        valid_span("kept"),
        valid_span("no-span", span_id=b""),
    )
    rows = to_rows(spans)

    assert (rows.count, rows.rejected) == (1, 2)
    assert rows.error.startswith("span 'no-trace': trace_id")


def test_valid_span_ids_are_stored_as_lowercase_hex() -> None:
    row = only_row(to_rows(request(valid_span(parent_span_id=PARENT_ID))))

    assert row["TraceId"] == TRACE_ID.hex()
    assert row["SpanId"] == "0102030405060708"
    assert row["ParentSpanId"] == "090a0b0c0d0e0f10"
    assert row["ProjectId"] == "p"


# --- timestamps ----------------------------------------------------------------------------------


def test_timestamps_beyond_int64_are_clamped() -> None:
    span = valid_span(
        start_time_unix_nano=UINT64_MAX,
        end_time_unix_nano=UINT64_MAX,
        events=[otlp.Span.Event(name="late", time_unix_nano=UINT64_MAX)],
    )
    row = only_row(to_rows(request(span)))

    assert row["Timestamp"] == INT64_MAX
    assert row["Events.Timestamp"] == [INT64_MAX]
    assert row["Duration"] == 0


def test_end_before_start_gives_duration_zero() -> None:
    span = valid_span(start_time_unix_nano=2_000, end_time_unix_nano=1_000)
    row = only_row(to_rows(request(span)))

    assert (row["Timestamp"], row["Duration"]) == (2_000, 0)


def test_duration_is_end_minus_start() -> None:
    row = only_row(to_rows(request(valid_span())))

    assert row["Duration"] == 250_000_000

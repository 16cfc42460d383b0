"""Wire bytes → a block ready to insert: decode, map, encode; pure and blocking.

What the decode workers run (`workers`), one export at a time: the whole
Python side of ingest, kept apart from the process that owns ClickHouse.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, replace

from tracehouse.collector.batcher import Block, Rows
from tracehouse.collector.decode import (
    PayloadTooLarge,
    Signal,
    decompress,
    from_json,
    from_protobuf,
)
from tracehouse.collector.encode import LOG_ENCODER, SPAN_ENCODER
from tracehouse.collector.logs import log_rows
from tracehouse.collector.pricing import price
from tracehouse.collector.spans import Mapping, span_rows


class Format(enum.Enum):
    PROTOBUF = "protobuf"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Limits:
    max_decompressed_bytes: int
    max_value_bytes: int
    max_spans_per_request: int = 50_000
    max_attributes: int = 1024
    max_events: int = 1024
    max_links: int = 128


def decode_export(
    body: bytes,
    fmt: Format,
    encoding: str,
    limits: Limits,
    project_id: str,
    signal: Signal = Signal.TRACES,
) -> Rows:
    """Wire bytes to rows: pure and blocking."""
    raw = decompress(body, encoding, limits.max_decompressed_bytes)
    decoded = from_protobuf(raw, signal) if fmt is Format.PROTOBUF else from_json(raw, signal)
    if signal is Signal.TRACES:
        spans = sum(len(s.spans) for r in decoded.request.resource_spans for s in r.scope_spans)
        if spans > limits.max_spans_per_request:
            raise PayloadTooLarge(
                f"{spans} spans in one request; the limit is {limits.max_spans_per_request}"
            )
        mapping = Mapping(
            price, limits.max_value_bytes, limits.max_attributes, limits.max_events,
            limits.max_links, received_ns=time.time_ns(),
        )  # fmt: skip
        rows = span_rows(decoded.request, project_id, mapping)
    else:
        rows = log_rows(decoded.request, project_id)
    if not decoded.rejected:
        return rows
    return replace(
        rows, rejected=rows.rejected + decoded.rejected, error=decoded.error or rows.error
    )


def prepare_export(
    body: bytes,
    fmt: Format,
    encoding: str,
    limits: Limits,
    project_id: str,
    signal: Signal = Signal.TRACES,
) -> Block:
    """Wire bytes to a block ready to insert: pure and blocking, for a worker process."""
    rows = decode_export(body, fmt, encoding, limits, project_id, signal)
    return (SPAN_ENCODER if signal is Signal.TRACES else LOG_ENCODER).encode(rows)

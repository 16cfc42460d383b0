"""Protobuf log requests → log rows, column by column, losslessly.

Log records linked to a span become that step's events; records the client
helper streams (`tracehouse.chunk.channel` = `output` or `reasoning`) are
the step's live text, in `tracehouse.chunk.index` order. Records linked to
nothing are stored all the same: nothing sent is dropped.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.logs.v1 import logs_pb2

from tracehouse.collector.batcher import Rows
from tracehouse.collector.spans import INT64_MAX, attribute_text, attributes_of
from tracehouse.schema.rows import (
    CHUNK_CHANNEL_KEY,
    CHUNK_CHANNELS,
    CHUNK_INDEX_KEY,
    WRITTEN_LOG_COLUMNS,
)

_UINT32_MAX = 2**32 - 1


def log_rows(request: otlp_logs.ExportLogsServiceRequest, project_id: str) -> Rows:
    """Every valid log record of the request as a row of `project_id`."""
    records: list[tuple[Any, ...]] = []
    rejected = 0
    error = ""
    for resource_logs in request.resource_logs:
        resource_types: dict[str, str] = {}
        resource = attributes_of(resource_logs.resource.attributes, "r", resource_types)
        service = resource.get("service.name", "")
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope
            scope_types = dict(resource_types)
            scope_attributes = attributes_of(scope.attributes, "c", scope_types)
            for record in scope_logs.log_records:
                problem = _id_problem(record)
                if problem:
                    rejected += 1
                    error = error or problem
                    continue
                types = dict(scope_types)
                attributes = attributes_of(record.attributes, "s", types)
                body, body_type = attribute_text(record.body)
                if body_type:
                    types["b.body"] = body_type
                span_id = record.span_id.hex()
                channel = attributes.get(CHUNK_CHANNEL_KEY, "")
                observed = min(record.observed_time_unix_nano, INT64_MAX)
                records.append((
                    project_id, min(record.time_unix_nano, INT64_MAX) or observed, observed,
                    record.trace_id.hex(), span_id, record.flags, record.severity_text,
                    min(max(record.severity_number, 0), 255), body, record.event_name, service,
                    resource, resource_logs.schema_url, scope.name, scope.version,
                    scope_attributes, scope_logs.schema_url, attributes, types,
                    record.dropped_attributes_count,
                    channel if span_id and channel in CHUNK_CHANNELS else "",
                    _index(attributes.get(CHUNK_INDEX_KEY, "")),
                ))  # fmt: skip
    return Rows.of(records, len(WRITTEN_LOG_COLUMNS), rejected, error)


def _id_problem(record: logs_pb2.LogRecord) -> str:
    if len(record.trace_id) not in (0, 16):
        return "log record: trace_id must be empty or 16 bytes"
    if len(record.span_id) not in (0, 8):
        return "log record: span_id must be empty or 8 bytes"
    return ""


def _index(text: str) -> int:
    try:
        return min(max(int(text), 0), _UINT32_MAX)
    except ValueError:  # not an integer: a chunk of unknown place
        return 0

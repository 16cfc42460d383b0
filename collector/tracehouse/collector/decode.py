"""OTLP on the wire → protobuf requests: content encodings, protobuf and OTLP/JSON.

Two signals come in, traces and logs; a `Signal` says how each one's
request is shaped. OTLP/JSON differs from protobuf's canonical JSON in one
way that matters: trace and span ids are hex, not base64. Ids are
translated before the protobuf JSON parser sees them; a span (or log
record) whose id is not hex is taken out and counted as rejected rather
than stored with a wrong id.
"""

from __future__ import annotations

import base64
import enum
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace


class DecodeError(ValueError):
    """The payload is not valid OTLP; the message says why, for the client."""


class PayloadTooLarge(DecodeError):
    """The payload, or what it decompresses to, is over the configured limit."""


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding this receiver does not speak."""


@dataclass(frozen=True, slots=True)
class Shape:
    """Where a signal's items and their ids sit in its OTLP/JSON request."""

    request: type[Message]
    resources: tuple[str, ...]  # field names, lowerCamelCase and snake_case
    scopes: tuple[str, ...]
    items: tuple[str, ...]


class Signal(enum.Enum):
    TRACES = Shape(
        otlp_trace.ExportTraceServiceRequest,
        ("resourceSpans", "resource_spans"),
        ("scopeSpans", "scope_spans"),
        ("spans",),
    )
    LOGS = Shape(
        otlp_logs.ExportLogsServiceRequest,
        ("resourceLogs", "resource_logs"),
        ("scopeLogs", "scope_logs"),
        ("logRecords", "log_records"),
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    request: Any  # the signal's Export*ServiceRequest
    # Items the decoder had to leave out (JSON ids that are not hex).
    rejected: int = 0
    error: str = ""


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, refusing to grow past `limit` bytes."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r}; use gzip")
    parts: list[bytes] = []
    size = 0
    rest = body
    # A gzip body may be several members one after another (RFC 1952): all
    # are read, as the OpenTelemetry Collector reads them.
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            # One byte past the limit tells a bomb from a payload that fits exactly.
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise DecodeError(f"body is not valid {encoding}: {exc}") from exc
        size += len(part)
        parts.append(part)
        if size > limit:
            raise PayloadTooLarge(f"body decompresses to more than {limit} bytes")
        if not inflater.eof:
            raise DecodeError(f"body is truncated {encoding}")
        rest = inflater.unused_data
        if encoding != "gzip" or not rest:
            break
    if rest:
        raise DecodeError(f"body has bytes after its {encoding} stream")
    return b"".join(parts)


def from_protobuf(body: bytes, signal: Signal) -> Decoded:
    request = signal.value.request()
    try:
        request.ParseFromString(body)
    except ProtobufDecodeError as exc:
        name = request.DESCRIPTOR.name
        raise DecodeError(f"body is not a valid {name}: {exc}") from exc
    return Decoded(request)


def from_json(body: bytes, signal: Signal) -> Decoded:
    request: Message = signal.value.request()
    name = request.DESCRIPTOR.name
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DecodeError(f"body must be a JSON object ({name})")
    _check_shapes(document, request.DESCRIPTOR)  # type: ignore[arg-type]
    rejected, error = _hex_ids_to_base64(document, signal.value)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"body is not a valid OTLP/JSON {name}: {exc}") from exc
    return Decoded(request, rejected, error)


def _check_shapes(document: dict[str, Any], descriptor: Descriptor) -> None:
    """Refuse a non-object where a message belongs, or a non-list where a repeated one does.

    protobuf's JSON parser, told to ignore unknown fields (as OTLP requires),
    would read `"status": "ERROR"` as an object with unknown fields and
    silently drop it.
    """
    not_otlp = f"body is not a valid OTLP/JSON {descriptor.name}"
    stack = [(document, descriptor, descriptor.name)]
    while stack:
        node, message, path = stack.pop()
        for key, value in node.items():
            field = message.fields_by_camelcase_name.get(key) or message.fields_by_name.get(key)
            if field is None or field.message_type is None:
                continue
            where = f"{path}.{key}"
            items = value if field.is_repeated else [value]
            if field.is_repeated and not isinstance(value, list):
                raise DecodeError(f"{not_otlp}: {where} must be a JSON array")
            for item in items:
                if not isinstance(item, dict):
                    raise DecodeError(f"{not_otlp}: {where} must be made of JSON objects")
                stack.append((item, field.message_type, where))


# Id fields, in lowerCamelCase and snake_case: OTLP/JSON receivers accept
# both. Their lengths are checked with the rows (`spans.py`, `logs.py`).
_IDS = frozenset({"traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"})


def _hex_ids_to_base64(document: dict[str, Any], shape: Shape) -> tuple[int, str]:
    """Rewrite hex ids in place as protobuf JSON's base64; drop items with bad ids."""
    rejected = 0
    error = ""
    for resource in _items(document, shape.resources):
        for scope in _items(resource, shape.scopes):
            for key in shape.items:
                items = scope.get(key)
                if not isinstance(items, list):
                    continue
                kept = []
                for item in items:
                    problem = _convert_ids(item) if isinstance(item, dict) else "not an object"
                    if problem:
                        rejected += 1
                        error = error or problem
                    else:
                        kept.append(item)
                scope[key] = kept
    return rejected, error


def _items(container: Any, keys: tuple[str, ...]) -> list[Any]:
    for key in keys:
        value = container.get(key) if isinstance(container, dict) else None
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return []


def _convert_ids(item: dict[str, Any]) -> str:
    """Convert a span's (and its links') or a log record's ids; a reason if one is not hex."""
    links = item.get("links")
    for holder in (item, *(links if isinstance(links, list) else ())):
        for key in _IDS & holder.keys():
            value = holder[key]
            if not isinstance(value, str):
                return f"{key} must be a hex string"
            try:
                holder[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                return f"{key} {value[:64]!r} is not hex"
    return ""

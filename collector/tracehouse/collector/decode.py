"""OTLP on the wire → protobuf requests: content encodings, protobuf and OTLP/JSON.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters:
trace and span ids are hex, not base64. Ids are translated before the
protobuf JSON parser sees them; a span whose id is not hex is taken out and
counted as rejected rather than stored with a wrong id.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace


class DecodeError(ValueError):
    """The payload is not valid OTLP; the message says why, for the client."""


class PayloadTooLarge(DecodeError):
    """The payload, or what it decompresses to, is over the configured limit."""


class UnsupportedEncoding(DecodeError):
    """A Content-Encoding this receiver does not speak."""


@dataclass(frozen=True, slots=True)
class DecodedTraces:
    request: otlp_trace.ExportTraceServiceRequest
    # Spans the decoder had to leave out (JSON ids that are not hex).
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
    inflater = zlib.decompressobj(wbits)
    try:
        # One byte past the limit tells a bomb from a payload that fits exactly.
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise DecodeError(f"body is not valid {encoding}: {exc}") from exc
    if len(out) > limit:
        raise PayloadTooLarge(f"body decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise DecodeError(f"body is truncated {encoding}")
    return out


def traces_from_protobuf(body: bytes) -> DecodedTraces:
    request = otlp_trace.ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except ProtobufDecodeError as exc:
        raise DecodeError(f"body is not a valid ExportTraceServiceRequest: {exc}") from exc
    return DecodedTraces(request)


def traces_from_json(body: bytes) -> DecodedTraces:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DecodeError("body must be a JSON object (ExportTraceServiceRequest)")
    _check_shapes(document, otlp_trace.ExportTraceServiceRequest.DESCRIPTOR)
    rejected, error = _hex_ids_to_base64(document)
    request = otlp_trace.ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"{_NOT_OTLP_JSON}: {exc}") from exc
    return DecodedTraces(request, rejected, error)


_NOT_OTLP_JSON = "body is not a valid OTLP/JSON ExportTraceServiceRequest"


def _check_shapes(document: dict[str, Any], descriptor: Descriptor) -> None:
    """Refuse a non-object where a message belongs, or a non-list where a repeated one does.

    protobuf's JSON parser, told to ignore unknown fields (as OTLP requires),
    would read `"status": "ERROR"` as an object with unknown fields and
    silently drop it.
    """
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
                raise DecodeError(f"{_NOT_OTLP_JSON}: {where} must be a JSON array")
            for item in items:
                if not isinstance(item, dict):
                    raise DecodeError(f"{_NOT_OTLP_JSON}: {where} must be made of JSON objects")
                stack.append((item, field.message_type, where))


# Field names in lowerCamelCase and snake_case: OTLP/JSON receivers accept both.
_RESOURCE_SPANS = ("resourceSpans", "resource_spans")
_SCOPE_SPANS = ("scopeSpans", "scope_spans")
_SPAN_IDS = {
    "traceId": 16,
    "trace_id": 16,
    "spanId": 8,
    "span_id": 8,
    "parentSpanId": 8,
    "parent_span_id": 8,
}


def _hex_ids_to_base64(document: dict[str, Any]) -> tuple[int, str]:
    """Rewrite hex ids in place as protobuf JSON's base64; drop spans with bad ids."""
    rejected = 0
    error = ""
    for resource_spans in _items(document, _RESOURCE_SPANS):
        for scope_spans in _items(resource_spans, _SCOPE_SPANS):
            spans = scope_spans.get("spans")
            if not isinstance(spans, list):
                continue
            kept = []
            for span in spans:
                problem = _convert_ids(span) if isinstance(span, dict) else "span is not an object"
                if problem:
                    rejected += 1
                    error = error or problem
                else:
                    kept.append(span)
            scope_spans["spans"] = kept
    return rejected, error


def _items(container: Any, keys: tuple[str, ...]) -> list[Any]:
    for key in keys:
        value = container.get(key) if isinstance(container, dict) else None
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return []


def _convert_ids(span: dict[str, Any]) -> str:
    """Convert a span's and its links' ids; a reason if one is not hex."""
    links = span.get("links")
    for holder in (span, *(links if isinstance(links, list) else ())):
        for key in _SPAN_IDS.keys() & holder.keys():
            value = holder[key]
            if not isinstance(value, str):
                return f"{key} must be a hex string"
            try:
                holder[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                return f"{key} {value[:64]!r} is not hex"
    return ""

"""OTLP/HTTP receiver: `POST /v1/traces` and `/v1/logs` in protobuf or JSON, `GET /healthz`.

Answers as the OTLP specification says: the response is encoded like the
request; errors carry a `google.rpc.Status`; 400 for bad data, 413 for a
body over the limit, 415 for a media type other than protobuf or JSON, and
503 with Retry-After when the client should try again.
"""

from __future__ import annotations

import asyncio
import random

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracehouse.collector.batcher import Overloaded, WriteFailed
from tracehouse.collector.decode import (
    DecodeError,
    PayloadTooLarge,
    Signal,
    UnsupportedEncoding,
)
from tracehouse.collector.pipeline import Pipeline
from tracehouse.collector.prepare import Format
from tracehouse.collector.receiver_grpc import export_response
from tracehouse.keys import Forbidden, Unauthorized
from tracehouse.metrics import metrics_endpoint

# Refused clients are told to come back after 1 to 5 s, at random: told all
# the same, a crowd returns at once and is refused together again, and an
# exporter that obeys Retry-After gives up after a few tries (Python's: 6).
RETRY_AFTER_SECONDS = (1, 5)

_MEDIA_TYPES = {"application/x-protobuf": Format.PROTOBUF, "application/json": Format.JSON}


def create_otlp_app(pipeline: Pipeline, max_message_bytes: int, timeout_s: float) -> Starlette:
    async def export(request: Request, signal: Signal) -> Response:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        fmt = _MEDIA_TYPES.get(media_type)
        if fmt is None:
            message = (
                f"unsupported Content-Type {media_type!r}; "
                "use application/x-protobuf or application/json"
            )
            return _status(Format.JSON, 415, code_pb2.INVALID_ARGUMENT, message)
        try:
            async with asyncio.timeout(timeout_s):  # a body trickling in ties up no more
                body = await _read_body(request, max_message_bytes)
            result = await pipeline.export(
                body,
                fmt,
                request.headers.get,
                signal=signal,
                encoding=request.headers.get("content-encoding", ""),
            )
        except Unauthorized as exc:
            response = _status(fmt, 401, code_pb2.UNAUTHENTICATED, str(exc))
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        except Forbidden as exc:
            return _status(fmt, 403, code_pb2.PERMISSION_DENIED, str(exc))
        except TimeoutError:
            message = f"the request body did not arrive within {timeout_s:g} s"
            return _status(fmt, 408, code_pb2.DEADLINE_EXCEEDED, message)
        except PayloadTooLarge as exc:
            return _status(fmt, 413, code_pb2.INVALID_ARGUMENT, str(exc))
        except UnsupportedEncoding as exc:
            return _status(fmt, 415, code_pb2.INVALID_ARGUMENT, str(exc))
        except DecodeError as exc:
            return _status(fmt, 400, code_pb2.INVALID_ARGUMENT, str(exc))
        except (Overloaded, WriteFailed) as exc:
            response = _status(fmt, 503, code_pb2.UNAVAILABLE, str(exc))
            response.headers["Retry-After"] = str(random.randint(*RETRY_AFTER_SECONDS))  # noqa: S311
            return response
        return _encode(fmt, 200, export_response(result, signal))

    async def traces(request: Request) -> Response:
        return await export(request, Signal.TRACES)

    async def logs(request: Request) -> Response:
        return await export(request, Signal.LOGS)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/traces", traces, methods=["POST"]),
            Route("/v1/logs", logs, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/metrics", metrics_endpoint),
        ]
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _status(fmt: Format, http_status: int, code: int, message: str) -> Response:
    return _encode(fmt, http_status, status_pb2.Status(code=code, message=message))


def _encode(fmt: Format, http_status: int, message: Message) -> Response:
    if fmt is Format.PROTOBUF:
        return Response(
            message.SerializeToString(), http_status, media_type="application/x-protobuf"
        )
    return JSONResponse(json_format.MessageToDict(message), http_status)

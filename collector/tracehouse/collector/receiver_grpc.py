"""OTLP/gRPC receiver: `TraceService/Export`, `LogsService/Export` and gRPC health checking.

Thin: request bytes go to the pipeline undecoded (so a bad payload is our
INVALID_ARGUMENT with a reason, not a deserializer crash), and the outcome
becomes a status code. gzip-compressed requests are inflated by gRPC itself,
within the same message size limit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeAlias

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace

from tracehouse.collector.batcher import Overloaded, WriteFailed
from tracehouse.collector.decode import DecodeError, Signal
from tracehouse.collector.pipeline import ExportResult, Pipeline
from tracehouse.collector.prepare import Format
from tracehouse.keys import Forbidden, Unauthorized

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
SERVICES = {TRACE_SERVICE: Signal.TRACES, LOGS_SERVICE: Signal.LOGS}


def export_response(result: ExportResult, signal: Signal) -> Message:
    if signal is Signal.TRACES:
        spans = otlp_trace.ExportTraceServiceResponse()
        if result.rejected:
            spans.partial_success.rejected_spans = result.rejected
            spans.partial_success.error_message = result.error
        return spans
    logs = otlp_logs.ExportLogsServiceResponse()
    if result.rejected:
        logs.partial_success.rejected_log_records = result.rejected
        logs.partial_success.error_message = result.error
    return logs


class GrpcReceiver:
    def __init__(self, pipeline: Pipeline, host: str, port: int, max_message_bytes: int) -> None:
        self._pipeline = pipeline
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self._health = HealthServicer()
        self.port = 0

    async def __aenter__(self) -> GrpcReceiver:
        self._server.add_generic_rpc_handlers(
            tuple(
                grpc.method_handlers_generic_handler(
                    service, {"Export": grpc.unary_unary_rpc_method_handler(self._export(signal))}
                )
                for service, signal in SERVICES.items()
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = self._server.add_insecure_port(self._address)
        await self._server.start()
        for service in ("", *SERVICES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._health.enter_graceful_shutdown()
        # Exports in flight finish (they wait for their write) before we return.
        await self._server.stop(grace=10)

    def _export(self, signal: Signal) -> Callable[[bytes, Context], Awaitable[bytes]]:
        async def export(request: bytes, context: Context) -> bytes:
            metadata = dict(context.invocation_metadata() or ())
            try:
                result = await self._pipeline.export(
                    request, Format.PROTOBUF, metadata.get, signal=signal
                )
            except Unauthorized as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            except Forbidden as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except (Overloaded, WriteFailed) as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return bytes(export_response(result, signal).SerializeToString())

        return export

"""OTLP/gRPC receiver: `TraceService/Export` and gRPC health checking.

Thin: request bytes go to the pipeline undecoded (so a bad payload is our
INVALID_ARGUMENT with a reason, not a deserializer crash), and the outcome
becomes a status code. gzip-compressed requests are inflated by gRPC itself,
within the same message size limit.
"""

from __future__ import annotations

import logging
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace

from tracehouse.collector.batcher import Overloaded, WriteFailed
from tracehouse.collector.decode import DecodeError
from tracehouse.collector.pipeline import ExportResult, Format, TracePipeline

log = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def export_response(result: ExportResult) -> otlp_trace.ExportTraceServiceResponse:
    response = otlp_trace.ExportTraceServiceResponse()
    if result.rejected:
        response.partial_success.rejected_spans = result.rejected
        response.partial_success.error_message = result.error
    return response


class GrpcReceiver:
    def __init__(self, pipeline: TracePipeline, host: str, port: int, max_message_bytes: int):
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
        handler = grpc.unary_unary_rpc_method_handler(self._export)
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(TRACE_SERVICE, {"Export": handler}),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.port = self._server.add_insecure_port(self._address)
        await self._server.start()
        for service in ("", TRACE_SERVICE):
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

    async def _export(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        try:
            result = await self._pipeline.export(request, Format.PROTOBUF)
        except DecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (Overloaded, WriteFailed) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return bytes(export_response(result).SerializeToString())

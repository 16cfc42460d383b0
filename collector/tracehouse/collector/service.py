"""The collector: writer, batcher, pipeline and both OTLP receivers, in order.

Started in dependency order and stopped in reverse: the receivers stop
first (finishing exports in flight), then the batcher writes everything it
accepted, and only then may the caller close the ClickHouse client.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from types import TracebackType

from clickhouse_connect.driver.client import Client

from tracehouse.collector.batcher import Batcher
from tracehouse.collector.pipeline import Limits, TracePipeline
from tracehouse.collector.receiver_grpc import GrpcReceiver
from tracehouse.collector.receiver_http import create_otlp_app
from tracehouse.collector.writer import SpanWriter
from tracehouse.listeners import HttpListener
from tracehouse.settings import Settings

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, settings: Settings, client: Client) -> None:
        self._settings = settings
        self._client = client
        self._stack = AsyncExitStack()
        self.grpc_port = 0
        self.http_port = 0

    async def __aenter__(self) -> Collector:
        s = self._settings
        async with AsyncExitStack() as stack:
            writer = SpanWriter(self._client)
            batcher = await stack.enter_async_context(
                Batcher(
                    writer.write_async,
                    max_spans=s.batch_max_spans,
                    max_delay=s.batch_max_delay_ms / 1000,
                    max_queued=s.queue_max_spans,
                )
            )
            executor = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="decode"))
            limits = Limits(s.max_decompressed_bytes, s.max_value_bytes)
            pipeline = TracePipeline(batcher, executor, limits)
            grpc = await stack.enter_async_context(
                GrpcReceiver(pipeline, s.host, s.grpc_port, s.max_message_bytes)
            )
            http = await stack.enter_async_context(
                HttpListener(create_otlp_app(pipeline, s.max_message_bytes), s.host, s.http_port)
            )
            self.grpc_port, self.http_port = grpc.port, http.port
            log.info("OTLP/gRPC listening on %s:%d", s.host, grpc.port)
            log.info("OTLP/HTTP listening on http://%s:%d/v1/traces", s.host, http.port)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("collector stopped; every accepted span is written")

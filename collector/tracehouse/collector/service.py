"""The collector: writers, batchers, pipeline and both OTLP receivers, in order.

Started in dependency order and stopped in reverse: the receivers stop
first (finishing exports in flight), then the batchers write everything
they accepted, and only then may the caller close the ClickHouse client.
Spans and log records are batched and written apart, one table each; after
each write, `announce` hears which runs (project, trace) just changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType

from clickhouse_connect.driver.client import Client

from tracehouse.collector.batcher import Batcher, Block
from tracehouse.collector.decode import Signal
from tracehouse.collector.pipeline import Pipeline
from tracehouse.collector.prepare import Limits
from tracehouse.collector.receiver_grpc import GrpcReceiver
from tracehouse.collector.receiver_http import create_otlp_app
from tracehouse.collector.workers import Workers
from tracehouse.collector.writer import TableWriter, log_writer, span_writer
from tracehouse.keys import ApiKeys
from tracehouse.listeners import HttpListener
from tracehouse.metrics import QUEUED
from tracehouse.settings import Settings

log = logging.getLogger(__name__)

Announce = Callable[[Iterable[tuple[str, str]]], None]


def _held(batcher: Batcher) -> float:
    return batcher.held


class Collector:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        keys: ApiKeys,
        announce: Announce | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._keys = keys
        self._announce = announce
        self._stack = AsyncExitStack()
        self.grpc_port = 0
        self.http_port = 0

    async def __aenter__(self) -> Collector:
        s = self._settings
        async with AsyncExitStack() as stack:
            written = self._written()
            writers = {
                Signal.TRACES: span_writer(self._client, written),
                Signal.LOGS: log_writer(self._client, written),
            }
            batchers = {
                signal: await stack.enter_async_context(self._batcher(writer))
                for signal, writer in writers.items()
            }
            workers = stack.enter_context(Workers(s.decode_workers))
            await workers.start()
            limits = Limits(
                s.max_decompressed_bytes, s.max_value_bytes, s.max_spans_per_request,
                s.max_attributes, s.max_events, s.max_links,
            )  # fmt: skip
            pipeline = Pipeline(batchers, workers, limits, self._keys)
            for signal, batcher in batchers.items():
                QUEUED.labels(signal.name.lower()).set_function(partial(_held, batcher))
            grpc = await stack.enter_async_context(
                GrpcReceiver(pipeline, s.host, s.grpc_port, s.max_message_bytes)
            )
            otlp_app = create_otlp_app(pipeline, s.max_message_bytes, s.request_timeout_s)
            http = await stack.enter_async_context(HttpListener(otlp_app, s.host, s.http_port))
            self.grpc_port, self.http_port = grpc.port, http.port
            log.info("OTLP/gRPC listening on %s:%d", s.host, grpc.port)
            log.info("OTLP/HTTP listening on http://%s:%d/v1/{traces,logs}", s.host, http.port)
            self._stack = stack.pop_all()
        return self

    def _batcher(self, writer: TableWriter) -> Batcher:
        s = self._settings
        return Batcher(
            writer.write_async,
            max_spans=s.batch_max_spans,
            ready_spans=s.batch_ready_spans,
            max_delay=s.batch_max_delay_ms / 1000,
            max_queued=s.queue_max_spans,
        )

    def _written(self) -> Callable[[Block], None] | None:
        announce = self._announce
        if announce is None:
            return None

        def written(block: Block) -> None:
            announce(block.runs)

        return written

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("collector stopped; every accepted span is written")

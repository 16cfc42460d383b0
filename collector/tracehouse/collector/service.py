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
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType

from clickhouse_connect.driver.client import Client

from tracehouse.collector.batcher import Batcher, Rows
from tracehouse.collector.decode import Signal
from tracehouse.collector.pipeline import Limits, Pipeline
from tracehouse.collector.receiver_grpc import GrpcReceiver
from tracehouse.collector.receiver_http import create_otlp_app
from tracehouse.collector.writer import TableWriter, log_writer, span_writer
from tracehouse.keys import ApiKeys
from tracehouse.listeners import HttpListener
from tracehouse.metrics import QUEUED
from tracehouse.schema.rows import WRITTEN_LOG_COLUMNS, WRITTEN_SPAN_COLUMNS
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
            writers = {
                Signal.TRACES: span_writer(self._client, self._written(WRITTEN_SPAN_COLUMNS)),
                Signal.LOGS: log_writer(self._client, self._written(WRITTEN_LOG_COLUMNS)),
            }
            batchers = {
                signal: await stack.enter_async_context(self._batcher(writer))
                for signal, writer in writers.items()
            }
            executor = stack.enter_context(ThreadPoolExecutor(2, thread_name_prefix="decode"))
            limits = Limits(
                s.max_decompressed_bytes, s.max_value_bytes, s.max_spans_per_request,
                s.max_attributes, s.max_events, s.max_links,
            )  # fmt: skip
            pipeline = Pipeline(batchers, executor, limits, self._keys)
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
            max_delay=s.batch_max_delay_ms / 1000,
            max_queued=s.queue_max_spans,
        )

    def _written(self, columns: tuple[str, ...]) -> Callable[[Rows], None] | None:
        announce = self._announce
        if announce is None:
            return None
        project, trace = columns.index("ProjectId"), columns.index("TraceId")

        def written(rows: Rows) -> None:
            # Lazily: with nobody watching, the feed does not even read the pairs.
            announce(zip(rows.columns[project], rows.columns[trace], strict=True))

        return written

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("collector stopped; every accepted span is written")

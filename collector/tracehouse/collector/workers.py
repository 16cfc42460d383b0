"""The decode workers: processes preparing exports, started and stopped with the collector.

The Python side of ingest (protobuf, mapping, Native encoding) runs here on
every core at once, instead of queueing for the one interpreter lock of the
process that also inserts into ClickHouse and serves queries.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import select
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TypeVar, TypeVarTuple

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace

from tracehouse.collector.batcher import WriteFailed
from tracehouse.collector.prepare import Format, Limits, prepare_export

log = logging.getLogger(__name__)
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def _warm() -> int:
    """An export's worth of first times (the price table, the encoder's lazy imports); the pid."""
    request = otlp_trace.ExportTraceServiceRequest()
    span = (
        request.resource_spans.add()
        .scope_spans.add()
        .spans.add(trace_id=b"\1" * 16, span_id=b"\1" * 8, name="chat")
    )
    for key, value in (("gen_ai.request.model", "gpt-4o"), ("gen_ai.usage.input_tokens", "1")):
        span.attributes.add(key=key).value.string_value = value
    prepare_export(request.SerializeToString(), Format.PROTOBUF, "", _WARM_LIMITS, "")
    gc.freeze()  # the price table it loaded, too (see _start_worker)
    return os.getpid()


_WARM_LIMITS = Limits(1 << 20, 1 << 20)


def _start_worker(collector_pid: int) -> None:
    """Each worker's start: its heap out of the cycle collector's walks, and its exit.

    The modules the fork server imported (pandas, the price table) are
    ~100,000 objects that live as long as the worker. Every full collection
    walked them all: one export in fifty took three times its CPU (p99 91 against
    p50 27 µs a span, one process decoding the ingest benchmark's exports),
    and at 10,000 spans/s that was the worst decodes' tail. Frozen, the
    p99 is 30 µs.
    """
    gc.freeze()
    _exit_with(collector_pid)


def _exit_with(pid: int) -> None:
    """Exit when the collector does, even one killed with -9.

    Workers are the fork server's children, and each holds the pipes of the
    others: without this, a killed collector would leave them waiting forever.
    """
    try:
        collector = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)

    def watch() -> None:
        select.select([collector], [], [])  # readable once the process has exited
        os._exit(0)

    threading.Thread(target=watch, name="watch-collector", daemon=True).start()


def _preload() -> list[str]:
    """What the fork server imports once, so that no worker has to."""
    # multiprocessing runs the parent's main module again in each worker;
    # clickhouse-connect's encoder imports pandas on first use (0.8 s), and
    # genai-prices its price table on the first price asked for (0.24 s).
    main = getattr(sys.modules["__main__"], "__spec__", None)
    lazy = ["pandas", "genai_prices.data"]
    return ["tracehouse.collector.prepare", *lazy, "__main__", *([main.name] if main else [])]


class Workers:
    """The processes preparing exports; a pool a dead worker broke is replaced.

    They start from a fork server, not by forking the collector: it runs
    threads (gRPC, chDB) that a plain fork would copy mid-flight. The fork
    server has the decoding modules imported, so a worker starts in
    milliseconds; `start` has each one running, its price table loaded,
    before the first export arrives.
    """

    def __init__(self, count: int) -> None:
        self._count = count
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_preload())
        self._pool = self._start()
        self.pids: list[int] = []

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self._count, self._context, initializer=_start_worker, initargs=(os.getpid(),)
        )

    def __enter__(self) -> Workers:
        return self

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Submitted at once, so none is idle yet and each starts a worker.
        started = (loop.run_in_executor(self._pool, _warm) for _ in range(self._count))
        self.pids = sorted(await asyncio.gather(*started))
        log.info("decode workers running: pids %s", self.pids)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, work: Callable[[*Ts], T], *args: *Ts) -> T:
        """`work(*args)` in a worker."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work, *args)
        except BrokenProcessPool as exc:
            # A worker was killed (out of memory, a signal): every export in
            # flight fails retryably, and the next ones get a fresh pool.
            if pool is self._pool:
                log.error("a decode worker died; starting new ones")
                self._pool = self._start()
                pool.shutdown(wait=False, cancel_futures=True)
            raise WriteFailed("the worker decoding this export stopped; retry") from exc

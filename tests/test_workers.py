"""Decode workers: exports are prepared in other processes, and a lost worker costs a retry."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

import pytest

from builders import LIMITS, new_id, request, span
from tracehouse.collector.batcher import WriteFailed
from tracehouse.collector.decode import DecodeError, Signal
from tracehouse.collector.prepare import Format, prepare_export
from tracehouse.collector.workers import Workers


def export(spans: int) -> bytes:
    trace = new_id(16)
    return request(
        [span("chat", trace, new_id(8), end=5) for _ in range(spans)]
    ).SerializeToString()


async def prepared(workers: Workers, body: bytes) -> int:
    block = await workers.run(prepare_export, body, Format.PROTOBUF, "", LIMITS, "p", Signal.TRACES)
    return block.count


async def kill_the_worker(workers: Workers) -> None:
    """Kill a one-worker pool's worker; the export that finds it dead fails retryably."""
    (pid,) = workers.pids
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)  # the pool notices a dead worker at once; give it time
    with pytest.raises(WriteFailed):
        await prepared(workers, export(3))


def test_exports_are_prepared_in_worker_processes_and_their_errors_come_back() -> None:
    async def main() -> None:
        with Workers(2) as workers:
            await workers.start()
            assert len(workers.pids) == 2
            assert os.getpid() not in workers.pids
            assert await asyncio.gather(*(prepared(workers, export(n)) for n in (1, 7, 30))) == [
                1, 7, 30,
            ]  # fmt: skip
            with pytest.raises(DecodeError):
                await prepared(workers, b"\xff not protobuf")

    asyncio.run(main())


def test_a_killed_worker_fails_its_export_retryably_and_the_next_one_is_prepared() -> None:
    async def main() -> None:
        with Workers(1) as workers:
            await workers.start()
            await kill_the_worker(workers)
            assert await prepared(workers, export(3)) == 3

    asyncio.run(main())


def test_each_worker_keeps_its_start_heap_out_of_the_cycle_collector_replacements_too() -> None:
    # The modules a worker starts with are ~100,000 objects; walked by every
    # full collection, they made one export in fifty take three times its CPU.
    async def main() -> None:
        with Workers(1) as workers:
            await workers.start()
            assert await workers.run(gc.get_freeze_count) > 10_000
            await kill_the_worker(workers)
            assert await workers.run(gc.get_freeze_count) > 10_000  # a fresh pool, never warmed

    asyncio.run(main())

"""A bounded batcher in front of the writer, after the OTel SDK's BatchProcessor.

Exports wait to be grouped into one insert until the batch holds
`ready_spans` or its oldest export has waited `max_delay`, whichever is
first, and one insert takes at most `max_spans`; the flusher waits on an
event with a timeout, never a polling sleep. While an insert is in flight,
whatever arrives waits for it and goes into the next one. Each `submit`
returns only when its spans are written (or raises when they were not), so
a receiver acknowledges nothing that is not in ClickHouse. Spans waiting or
being written are bounded by `max_queued`: past it `submit` refuses at once
with `Overloaded`, which receivers turn into a retryable answer. Closing
writes everything already accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows of one table as columns (in its written-column order), and what was left out."""

    columns: tuple[list[Any], ...]
    count: int
    rejected: int = 0
    error: str = ""  # why the first rejected item was left out

    @staticmethod
    def of(
        records: Sequence[tuple[Any, ...]], width: int, rejected: int = 0, error: str = ""
    ) -> Rows:
        """Rows from one tuple each, turned into columns at once (in C, not value by value)."""
        if not records:
            return Rows(tuple([] for _ in range(width)), 0, rejected, error)
        return Rows(tuple(map(list, zip(*records, strict=True))), len(records), rejected, error)


@dataclass(frozen=True, slots=True)
class Block:
    """Rows of one table encoded for ClickHouse (`encode`), as the batcher holds them."""

    data: bytes  # Native blocks, which concatenate
    count: int
    rejected: int = 0
    error: str = ""
    runs: frozenset[tuple[str, str]] = frozenset()  # (project, trace) of every row


def join(blocks: Sequence[Block]) -> Block:
    """One insert of many blocks."""
    if len(blocks) == 1:
        return blocks[0]
    return Block(
        b"".join(b.data for b in blocks),
        sum(b.count for b in blocks),
        sum(b.rejected for b in blocks),
        next((b.error for b in blocks if b.error), ""),
        frozenset().union(*(b.runs for b in blocks)),
    )


class Overloaded(Exception):
    """No room for more spans now; the client should retry later."""


class WriteFailed(Exception):
    """The batch holding these spans could not be written; retrying may succeed."""


@dataclass(slots=True)
class _Waiting:
    block: Block
    done: asyncio.Future[None]
    since: float


class Batcher:
    def __init__(
        self,
        write: Callable[[Block], Awaitable[None]],
        *,
        max_spans: int,
        max_delay: float,
        max_queued: int,
        ready_spans: int | None = None,
    ) -> None:
        self._write = write
        self._max_spans = max_spans
        self._ready_spans = min(ready_spans or max_spans, max_spans)
        self._max_delay = max_delay
        self._max_queued = max_queued
        self._waiting: deque[_Waiting] = deque()
        self._queued = 0  # spans waiting
        self._held = 0  # spans waiting or being written
        self._arrived = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_failure_log = 0.0

    @property
    def held(self) -> int:
        """Spans accepted and not yet written."""
        return self._held

    async def __aenter__(self) -> Batcher:
        self._task = asyncio.create_task(self._run(), name="batcher")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._arrived.set()
        self._ready.set()
        if self._task:
            await self._task

    def check_capacity(self, spans: int = 1) -> None:
        """Raise `Overloaded` if `spans` more would not fit; cheap, for before decoding."""
        if self._closing:
            raise Overloaded("the collector is shutting down")
        # One export is always let in when nothing is held, however large.
        if self._held and self._held + spans > self._max_queued:
            raise Overloaded(f"{self._held} spans are waiting to be written")

    async def submit(self, block: Block) -> None:
        """Queue a block and wait until it is written."""
        self.check_capacity(block.count)
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(block, done, time.monotonic()))
        self._queued += block.count
        self._held += block.count
        self._arrived.set()
        if self._queued >= self._ready_spans:
            self._ready.set()
        await asyncio.shield(done)

    async def _run(self) -> None:
        while self._waiting or not self._closing:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._until_due()
            taken = self._take()
            outcomes = await self._write_all(taken)
            self._held -= sum(w.block.count for w in taken)
            for waiting, outcome in zip(taken, outcomes, strict=True):
                if outcome is None:
                    waiting.done.set_result(None)
                else:
                    waiting.done.set_exception(outcome)

    async def _write_all(self, taken: list[_Waiting]) -> list[WriteFailed | None]:
        """Write the exports as one batch; if that fails, each alone.

        One export ClickHouse refuses must not fail the exports that happened
        to share its batch: retried alone, the others succeed and only the
        bad one is refused.
        """
        try:
            await self._write(join([w.block for w in taken]))
            return [None] * len(taken)
        except Exception as exc:
            self._log_failure(exc)
            if len(taken) == 1:
                return [WriteFailed(str(exc))]
        outcomes: list[WriteFailed | None] = []
        for waiting in taken:
            try:
                await self._write(waiting.block)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(WriteFailed(str(exc)))
        return outcomes

    async def _until_due(self) -> None:
        """Wait until the batch is ready, its oldest export is due, or we are closing."""
        if self._closing or self._queued >= self._ready_spans:
            return
        delay = self._waiting[0].since + self._max_delay - time.monotonic()
        if delay <= 0:
            return
        self._ready.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), delay)

    def _take(self) -> list[_Waiting]:
        """Whole exports up to `max_spans` (always at least one)."""
        taken = [self._waiting.popleft()]
        size = taken[0].block.count
        while self._waiting and size + self._waiting[0].block.count <= self._max_spans:
            size += self._waiting[0].block.count
            taken.append(self._waiting.popleft())
        self._queued -= size
        return taken

    def _log_failure(self, exc: Exception) -> None:
        # A down ClickHouse fails every batch; say so once in a while, not per batch.
        now = time.monotonic()
        if now - self._last_failure_log >= 10.0:
            self._last_failure_log = now
            log.warning("writing spans failed (retryable for clients): %s", exc)

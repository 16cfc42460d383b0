"""The batcher in front of the writer: what a receiver relies on when it awaits `submit`.

The writer is replaced by `FakeWriter`, an async callable that records the
spans of each batch it is given and can be held (to keep a write in flight)
or taken down. Spans are labelled rows, so a test can say which export
landed in which batch. Each test runs its own event loop with `asyncio.run`.

No test measures time. Where a flush must happen before `max_delay`, the
delay is far longer than `HANG_GUARD`, which only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

import pytest

from tracehouse.collector.batcher import Batcher, Block, Overloaded, WriteFailed

# Longer than any step here should take, far shorter than the `max_delay`s
# that a size flush must beat.
HANG_GUARD = 5.0
LONG_DELAY = 30.0
SHORT_DELAY = 0.01


def labelled(label: str, count: int) -> Block:
    """`count` spans, encoded as `<label><i>;` each."""
    return Block("".join(f"{label}{i};" for i in range(count)).encode(), count)


class FakeWriter:
    """The writer boundary: records each batch, can be held open or taken down."""

    def __init__(self) -> None:
        self.written: list[list[str]] = []  # span labels of each successful write
        self.attempts = 0
        self.down = False  # every write raises while set, like an unreachable ClickHouse
        self.in_write = asyncio.Event()  # set while a write is in flight
        self.release = asyncio.Event()  # writes wait on it; set = not held
        self.release.set()

    async def __call__(self, block: Block) -> None:
        self.attempts += 1
        self.in_write.set()
        try:
            await self.release.wait()
            if self.down:
                raise ConnectionError("ClickHouse is unreachable")
            self.written.append(block.data.decode().split(";")[:-1])
        finally:
            self.in_write.clear()

    def hold(self) -> None:
        self.release.clear()

    @property
    def spans(self) -> list[str]:
        return [label for batch in self.written for label in batch]


T = TypeVar("T")


async def guarded(step: Awaitable[T]) -> T:
    """`step`, failing the test instead of hanging if it never completes."""
    return await asyncio.wait_for(step, HANG_GUARD)


def submitting(batcher: Batcher, *exports: Block) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(batcher.submit(block)) for block in exports]


async def settle() -> None:
    """Let every task that is ready run until it waits (on a write, an event, the delay)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def queued(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Let freshly created submit tasks run up to their wait for the write."""
    await settle()
    for task in tasks:
        assert not task.done(), task


def test_small_submits_within_the_delay_are_written_as_one_batch() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=100, max_delay=SHORT_DELAY, max_queued=1000) as b:
            tasks = submitting(b, labelled("a", 2), labelled("b", 1), labelled("c", 3))
            await guarded(asyncio.gather(*tasks))
            assert writer.written == [["a0", "a1", "b0", "c0", "c1", "c2"]]
            assert b.held == 0

    asyncio.run(scenario())


def test_submit_returns_only_after_its_batch_is_written() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.hold()
        async with Batcher(writer, max_spans=100, max_delay=SHORT_DELAY, max_queued=1000) as b:
            tasks = submitting(b, labelled("a", 1), labelled("b", 1))
            await guarded(writer.in_write.wait())
            await asyncio.sleep(0)
            assert not any(task.done() for task in tasks), "acknowledged before written"
            assert writer.written == []

            writer.release.set()
            await guarded(asyncio.gather(*tasks))
            assert writer.written == [["a0", "b0"]]

    asyncio.run(scenario())


def test_reaching_max_spans_flushes_without_waiting_for_the_delay() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=5, max_delay=LONG_DELAY, max_queued=1000) as b:
            first = submitting(b, labelled("a", 2))
            await queued(first)  # the batcher is now waiting out the delay for it
            assert writer.written == []

            second = submitting(b, labelled("b", 3))
            await guarded(asyncio.gather(*first, *second))
            assert writer.written == [["a0", "a1", "b0", "b1", "b2"]]

    asyncio.run(scenario())


def test_export_that_would_overflow_the_batch_waits_for_the_next_one() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=5, max_delay=LONG_DELAY, max_queued=1000) as b:
            first, second = submitting(b, labelled("a", 3), labelled("b", 3))
            await guarded(first)
            assert writer.written == [["a0", "a1", "a2"]]
            assert not second.done()
        # Closing drains the export left behind.
        await guarded(second)
        assert writer.written == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]

    asyncio.run(scenario())


def test_an_export_larger_than_max_spans_is_written_whole() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=5, max_delay=LONG_DELAY, max_queued=1000) as b:
            await guarded(b.submit(labelled("a", 12)))
            assert writer.written == [[f"a{i}" for i in range(12)]]

    asyncio.run(scenario())


def test_submit_past_max_queued_is_refused_at_once_while_a_write_is_in_flight() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.hold()
        async with Batcher(writer, max_spans=5, max_delay=LONG_DELAY, max_queued=10) as b:
            in_flight = submitting(b, labelled("a", 6))
            await guarded(writer.in_write.wait())
            try:
                (refused,) = submitting(b, labelled("b", 5))
                fits = submitting(b, labelled("c", 4))
                await queued(fits)
                # Refused in its first step, without waiting for the held write.
                assert refused.done()
                assert isinstance(refused.exception(), Overloaded)
                assert b.held == 10
            finally:
                writer.release.set()
            await guarded(asyncio.gather(*in_flight))
        await guarded(asyncio.gather(*fits))
        assert writer.written == [[f"a{i}" for i in range(6)], [f"c{i}" for i in range(4)]]
        assert b.held == 0

    asyncio.run(scenario())


def test_one_export_is_accepted_when_nothing_is_held_however_large() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=5, max_delay=LONG_DELAY, max_queued=10) as b:
            await guarded(b.submit(labelled("a", 25)))
        assert writer.spans == [f"a{i}" for i in range(25)]

    asyncio.run(scenario())


def test_failed_write_fails_every_export_in_the_batch_and_the_next_batch_succeeds() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.down = True
        async with Batcher(writer, max_spans=2, max_delay=LONG_DELAY, max_queued=1000) as b:
            failed = submitting(b, labelled("a", 1), labelled("b", 1))
            outcomes = await guarded(asyncio.gather(*failed, return_exceptions=True))
            assert [type(outcome) for outcome in outcomes] == [WriteFailed, WriteFailed]
            assert "ClickHouse is unreachable" in str(outcomes[0])
            assert writer.written == []
            assert b.held == 0

            writer.down = False
            await guarded(asyncio.gather(*submitting(b, labelled("c", 1), labelled("d", 1))))
            assert writer.written == [["c0", "d0"]]

    asyncio.run(scenario())


def test_closing_writes_everything_already_submitted() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=100, max_delay=LONG_DELAY, max_queued=1000) as b:
            tasks = submitting(b, labelled("a", 2), labelled("b", 1))
            await queued(tasks)
            assert writer.written == []
        # Written by the drain on exit, long before the delay was up.
        assert writer.written == [["a0", "a1", "b0"]]
        await guarded(asyncio.gather(*tasks))
        assert b.held == 0

    asyncio.run(scenario())


def test_closing_waits_for_the_write_in_flight_and_drains_the_rest() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.hold()
        batcher = Batcher(writer, max_spans=2, max_delay=LONG_DELAY, max_queued=1000)
        await batcher.__aenter__()
        in_flight = submitting(batcher, labelled("a", 2))
        await guarded(writer.in_write.wait())
        later = submitting(batcher, labelled("b", 1))
        await queued(later)

        closing = asyncio.create_task(batcher.__aexit__(None, None, None))
        await asyncio.sleep(0)
        assert not closing.done()
        writer.release.set()
        await guarded(closing)
        assert writer.written == [["a0", "a1"], ["b0"]]
        await guarded(asyncio.gather(*in_flight, *later))

    asyncio.run(scenario())


def test_submit_after_close_is_refused() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=100, max_delay=LONG_DELAY, max_queued=1000) as b:
            pass
        with pytest.raises(Overloaded, match="shutting down"):
            await guarded(b.submit(labelled("late", 1)))
        assert writer.attempts == 0

    asyncio.run(scenario())


def test_cancelled_submitter_before_the_flush_does_not_affect_the_others() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with Batcher(writer, max_spans=3, max_delay=LONG_DELAY, max_queued=1000) as b:
            gone, stays = submitting(b, labelled("a", 1), labelled("b", 1))
            await queued([gone, stays])
            gone.cancel()
            await guarded(asyncio.wait([gone]))
            assert gone.cancelled()

            filler = submitting(b, labelled("c", 1))
            await guarded(asyncio.gather(stays, *filler))
            # Accepted spans are written even though nobody waits for them any more.
            assert writer.written == [["a0", "b0", "c0"]]
            assert b.held == 0

    asyncio.run(scenario())


def test_cancelled_submitter_during_the_write_does_not_affect_the_others() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.hold()
        async with Batcher(writer, max_spans=2, max_delay=LONG_DELAY, max_queued=1000) as b:
            gone, stays = submitting(b, labelled("a", 1), labelled("b", 1))
            await guarded(writer.in_write.wait())
            gone.cancel()
            await guarded(asyncio.wait([gone]))
            assert gone.cancelled()

            writer.release.set()
            await guarded(stays)
            assert writer.written == [["a0", "b0"]]
            await guarded(asyncio.gather(*submitting(b, labelled("c", 1), labelled("d", 1))))
            assert writer.written == [["a0", "b0"], ["c0", "d0"]]
            assert b.held == 0

    asyncio.run(scenario())


def ready_at(spans: int, writer: FakeWriter) -> Batcher:
    """A batcher that would wait out a long delay for any batch under `spans`."""
    return Batcher(writer, max_spans=100, max_delay=LONG_DELAY, max_queued=1000, ready_spans=spans)


def test_an_export_of_ready_spans_is_written_without_waiting_for_company() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with ready_at(4, writer) as b:
            await guarded(b.submit(labelled("a", 4)))
            assert writer.written == [["a0", "a1", "a2", "a3"]]

    asyncio.run(scenario())


def test_small_exports_wait_until_together_they_reach_ready_spans() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        async with ready_at(4, writer) as b:
            first = submitting(b, labelled("a", 1), labelled("b", 2))
            await queued(first)  # 3 spans: waiting out the delay for more
            assert writer.written == []
            second = submitting(b, labelled("c", 1))
            await guarded(asyncio.gather(*first, *second))
            assert writer.written == [["a0", "b0", "b1", "c0"]]

    asyncio.run(scenario())


def test_exports_arriving_during_a_write_share_the_next_insert() -> None:
    async def scenario() -> None:
        writer = FakeWriter()
        writer.hold()
        async with ready_at(2, writer) as b:
            first = submitting(b, labelled("a", 2))
            await guarded(writer.in_write.wait())
            later = submitting(b, labelled("b", 2), labelled("c", 2))
            await queued(later)
            writer.release.set()
            await guarded(asyncio.gather(*first, *later))
            assert writer.written == [["a0", "a1"], ["b0", "b1", "c0", "c1"]]

    asyncio.run(scenario())

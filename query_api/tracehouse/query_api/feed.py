"""Which runs just changed: the live feed behind the WebSockets.

One interface, two transports. A `Feed` tells listeners which (project,
trace) pairs have new spans or log records; listeners then read what
changed from ClickHouse themselves. So the feed carries no data, can never
disagree with storage, and a listener that misses a beat just reads once
for several changes.

- In one process (embedded mode), the collector's writers call `announce`
  after each insert: nothing is polled.
- When the query API runs apart from the collector, `ClickHouseTail` asks
  ClickHouse every `live_poll_ms` which runs moved since it last looked
  (`runs.LastSeen` and `logs.IngestedAt`, on minmax indexes), only while
  someone listens.

`announce` may be called from any thread and never waits: a writer must
not slow down because a WebSocket client is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TypeVar

from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import StorageError

log = logging.getLogger(__name__)

Change = tuple[str, str]  # (project, trace id)
K = TypeVar("K")


class Listener:
    """Wakes when a watched run changes; `wait()` says which traces did."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._traces: set[str] = set()

    def _notify(self, trace: str) -> None:
        self._traces.add(trace)
        self._changed.set()

    def wake(self) -> None:
        """End the current (or next) wait with no change: its owner has work of its own."""
        self._changed.set()

    async def wait(self) -> set[str]:
        """The traces changed since the last call (none if only woken)."""
        await self._changed.wait()
        self._changed.clear()
        traces, self._traces = self._traces, set()
        return traces


class Feed:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_trace: dict[Change, set[Listener]] = defaultdict(set)
        self._by_project: dict[str, set[Listener]] = defaultdict(set)

    async def __aenter__(self) -> Feed:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop = None

    @property
    def listening(self) -> bool:
        return bool(self._by_trace or self._by_project)

    def announce(self, changes: Iterable[Change]) -> None:
        """New rows were written for these runs. Thread-safe, never blocks."""
        loop = self._loop
        if loop is None or not self.listening:
            return
        batch = frozenset(changes)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, changes: frozenset[Change]) -> None:
        for project, trace in changes:
            if not trace:  # a log record linked to no run
                continue
            for listener in self._by_trace.get((project, trace), ()):
                listener._notify(trace)
            for listener in self._by_project.get(project, ()):
                listener._notify(trace)

    def listen(
        self, project: str, trace: str | None = None
    ) -> contextlib.AbstractContextManager[Listener]:
        """Listen to one run's trace, or (trace None) to every run of the project."""
        if trace is None:
            return _registered(self._by_project, project)
        return _registered(self._by_trace, (project, trace))


@contextlib.contextmanager
def _registered(registry: dict[K, set[Listener]], key: K) -> Iterator[Listener]:
    listener = Listener()
    registry[key].add(listener)
    try:
        yield listener
    finally:
        listeners = registry[key]
        listeners.discard(listener)
        if not listeners:
            del registry[key]


class ClickHouseTail:
    """Feeds `feed` from ClickHouse: for a query API apart from its collector."""

    # Rows become visible in IngestedAt order only roughly (an insert that
    # started first may commit last), so each look goes back this far and
    # announces a trace only if its newest row is newer than last time.
    OVERLAP_NS = 5_000_000_000

    def __init__(self, store: Store, feed: Feed, poll_seconds: float) -> None:
        self._store = store
        self._feed = feed
        self._poll = poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._latest: dict[Change, int] = {}

    async def __aenter__(self) -> ClickHouseTail:
        self._task = asyncio.create_task(self._run(), name="clickhouse-tail")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        since: int | None = None
        while True:
            await asyncio.sleep(self._poll)
            if not self._feed.listening:
                since = None  # start from now when someone listens again
                continue
            try:
                if since is None:
                    since = await asyncio.to_thread(self._store.now_ns)
                since = await asyncio.to_thread(self._look, since)
            except StorageError as exc:
                log.warning("live tail: %s", exc)

    def _look(self, since: int) -> int:
        """Announce traces with rows newer than we knew; the next `since`."""
        newest = since
        changed = []
        for project, trace, latest in self._store.arrived_since(since - self.OVERLAP_NS):
            if latest > self._latest.get((project, trace), 0):
                self._latest[(project, trace)] = latest
                changed.append((project, trace))
            newest = max(newest, latest)
        horizon = newest - 2 * self.OVERLAP_NS
        self._latest = {k: v for k, v in self._latest.items() if v > horizon}
        if changed:
            self._feed.announce(changed)
        return newest

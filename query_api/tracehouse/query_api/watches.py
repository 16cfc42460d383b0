"""Watching a run live: one reader per run, shared by every client watching it.

A `RunWatch` listens to the feed for its run's trace and, on each change,
reads the run once (its tree, and the text its steps streamed) and tells
each client what is new for it through the client's own `RunSession`. So a
hundred clients on one run cost one read per change, not a hundred.

All reads of a run happen one after another in its watch, and a client's
snapshot comes from one of them: a client joining is given the snapshot of
the next read, and the changes of every read after it. No read a client is
told of can be older than one it was told before, so nothing is repeated
or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from starlette.concurrency import run_in_threadpool

from tracehouse.query_api.feed import Feed, Listener
from tracehouse.query_api.live import Message, RunSession
from tracehouse.query_api.runs import TreeCache, run_tree
from tracehouse.query_api.store import Store

log = logging.getLogger(__name__)

# Chunks are read on from this long before the newest one a client was told
# (or the oldest one whose step is not known yet): one that committed late
# with an earlier arrival time is still found.
_CHUNK_OVERLAP_NS = 5_000_000_000


class Watcher(Protocol):
    """A client of a watch: takes messages, and hears when there will be no more."""

    def put(self, messages: list[Message]) -> bool:
        """False if they did not fit: the client fell behind and is let go."""
        ...

    def finish(self, failed: bool = False) -> None:
        """No more messages: the run ended, the client fell behind, or (failed) reading did."""
        ...


class RunWatch:
    def __init__(
        self, store: Store, trees: TreeCache, feed: Feed, project: str, run_id: str, trace: str
    ) -> None:
        self._store, self._trees, self._feed = store, trees, feed
        self._project, self._run_id, self._trace = project, run_id, trace
        self._joining: list[Watcher] = []
        self._watching: dict[Watcher, RunSession] = {}
        self._left: set[Watcher] = set()  # left while a read was under way
        self._listener: Listener | None = None
        self.closed = False

    def join(self, watcher: Watcher) -> None:
        self._joining.append(watcher)
        if self._listener:
            self._listener.wake()

    def leave(self, watcher: Watcher) -> None:
        self._watching.pop(watcher, None)
        self._left.add(watcher)
        with contextlib.suppress(ValueError):
            self._joining.remove(watcher)

    async def run(self) -> None:
        with self._feed.listen(self._project, self._trace) as listener:
            self._listener = listener
            listener.wake()  # the first clients joined before this ran
            failed = False
            try:
                while self._joining or self._watching:
                    await listener.wait()
                    joining, self._joining = self._joining, []
                    await self._read_and_tell(joining)
            except Exception:  # logged here; its clients are told to reconnect
                failed = True
                log.exception("watching run %s failed", self._run_id)
            finally:
                self.closed = True
                for watcher in [*self._joining, *self._watching]:
                    watcher.finish(failed)

    async def _read_and_tell(self, joining: list[Watcher]) -> None:
        known = [session.arrived_ns for session in self._watching.values()]
        since = 0 if joining or not known else max(min(known) - _CHUNK_OVERLAP_NS, 0)
        tree = await run_in_threadpool(
            run_tree, self._store, self._project, self._run_id, self._trees, self._trace
        )
        chunks = await run_in_threadpool(self._store.chunks, self._project, self._trace, since)
        if tree is None:  # gone (retention), or never a run: nothing more to tell
            for watcher in [*joining, *self._watching]:
                watcher.finish()
            self._watching.clear()
            return
        joining = [watcher for watcher in joining if watcher not in self._left]
        self._left.clear()
        told: list[tuple[Watcher, RunSession, list[Message]]] = []
        for watcher, session in self._watching.items():
            told.append((watcher, session, session.changes(tree, chunks)))
        for watcher in joining:
            session = RunSession()
            told.append((watcher, session, session.snapshot(tree, chunks)))
        for watcher, session, messages in told:
            if watcher.put(messages) and not session.finished:
                self._watching[watcher] = session
            else:
                self._watching.pop(watcher, None)
                watcher.finish()


class Watches:
    """The runs being watched in this process, each with its one reader."""

    def __init__(self, store: Store, trees: TreeCache, feed: Feed) -> None:
        self._store, self._trees, self._feed = store, trees, feed
        self._runs: dict[tuple[str, str], RunWatch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def join(self, project: str, run_id: str, trace: str, watcher: Watcher) -> RunWatch:
        key = (project, run_id)
        watch = self._runs.get(key)
        if watch is None or watch.closed:
            watch = self._runs[key] = RunWatch(
                self._store, self._trees, self._feed, project, run_id, trace
            )
            task = asyncio.create_task(watch.run(), name=f"watch:{run_id}")
            self._tasks.add(task)
            task.add_done_callback(lambda done: self._ended(key, watch, done))
        watch.join(watcher)
        return watch

    def _ended(self, key: tuple[str, str], watch: RunWatch, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._runs.get(key) is watch:
            del self._runs[key]

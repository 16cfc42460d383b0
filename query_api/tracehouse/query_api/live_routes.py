"""The WebSockets of DESIGN.md §4: `/api/v1/runs/{run_id}/live` and `/api/v1/live`.

A run's clients share one reader (`watches.RunWatch`); the list's clients
each listen to the feed first and read storage second, so a change can only
land after a read (and be diffed away) or wake the next one: never in
between. Messages go out through an `Outbox`:
a bounded queue drained by its own task, so a slow client only ever fills
its own queue, and is dropped with close code 1008 when that is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tracehouse.metrics import WEBSOCKETS, WEBSOCKETS_DROPPED
from tracehouse.query_api import params
from tracehouse.query_api.feed import Feed
from tracehouse.query_api.live import ListSession, Message
from tracehouse.query_api.routes import FilterDep, NotFound, ProjectDep
from tracehouse.query_api.runs import TreeCache, changed_runs, run_tree
from tracehouse.query_api.store import Store
from tracehouse.query_api.watches import Watches

router = APIRouter(prefix="/api/v1")

# RFC 6455's policy violation: the client fell too far behind; and its
# "try again later", when reading the run failed (ClickHouse was down).
TOO_SLOW = 1008
TRY_AGAIN = 1013


class Outbox:
    """A client's bounded queue of messages and the task that sends them."""

    def __init__(self, ws: WebSocket, size: int) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(size)
        self.overflowed = False
        self.failed = False
        self.done = asyncio.Event()

    def put(self, messages: list[Message]) -> bool:
        """Queue messages; False (and the client is to be dropped) if they do not fit."""
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                self.overflowed = True
                return False
        return True

    def finish(self, failed: bool = False) -> None:
        self.failed = failed
        self.done.set()

    async def close_after_sending(self) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def send_all(self) -> None:
        while (message := await self._queue.get()) is not None:
            await self._ws.send_bytes(orjson.dumps(message))


async def _serve(ws: WebSocket, kind: str, watch: Callable[[Outbox], Awaitable[None]]) -> None:
    """Run `watch` and the sender until the watch ends, the client leaves or falls behind."""
    outbox = Outbox(ws, ws.app.state.settings.live_buffer_messages)
    with WEBSOCKETS.labels(kind).track_inprogress():
        await _until_done(ws, outbox, watch)


async def _until_done(
    ws: WebSocket, outbox: Outbox, watch: Callable[[Outbox], Awaitable[None]]
) -> None:

    async def watching() -> None:
        await watch(outbox)
        await outbox.close_after_sending()

    async def listening_for_close() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()

    tasks = [asyncio.create_task(t) for t in (watching(), outbox.send_all(), listening_for_close())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done and not outbox.overflowed:  # the run ended: let the last out
            await asyncio.wait(tasks[1:], timeout=5, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    if ws.client_state is WebSocketState.CONNECTED:
        if outbox.overflowed:
            WEBSOCKETS_DROPPED.inc()
            await ws.close(TOO_SLOW, "client too slow: fell too far behind, reconnect")
        elif outbox.failed:
            await ws.close(TRY_AGAIN, "reading the run failed; reconnect")
        else:
            await ws.close()
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect):
            raise result


def _state(ws: WebSocket) -> tuple[Store, TreeCache, Feed, Watches]:
    state: Any = ws.app.state
    return state.store, state.trees, state.feed, state.watches


@router.websocket("/runs/{run_id}/live")
async def live_run(ws: WebSocket, run_id: str, project: ProjectDep) -> None:
    """The run as it happens: a snapshot, then step and text events, then `run_finished`."""
    store, trees, _, watches = _state(ws)
    # Refused before the handshake completes, so the client gets the HTTP
    # answer (422, 404) with the error envelope, as from the REST routes.
    # A step's id, not a run's, is refused like an unknown one.
    wanted = params.run_id(run_id)
    tree = await run_in_threadpool(run_tree, store, project, wanted, trees)
    if tree is None:
        raise NotFound(f"no run {run_id}")
    trace = tree.run.trace_id
    await ws.accept()

    async def watch(outbox: Outbox) -> None:
        watch = watches.join(project, wanted, trace, outbox)
        try:
            await outbox.done.wait()
        finally:
            watch.leave(outbox)

    await _serve(ws, "run", watch)


@router.websocket("/live")
async def live_list(ws: WebSocket, project: ProjectDep, f: FilterDep) -> None:
    """The run list as it changes: `run_started`, `run_updated`, `run_finished`."""
    store, trees, feed, _ = _state(ws)
    await ws.accept()

    async def watch(outbox: Outbox) -> None:
        session = ListSession(time.time_ns())
        with feed.listen(project) as listener:
            while True:
                traces = await listener.wait()
                scoped = replace(f, traces=tuple(sorted(traces)))
                runs = await run_in_threadpool(changed_runs, store, project, scoped, trees)
                if not outbox.put(session.changes(runs)):
                    return

    await _serve(ws, "list", watch)

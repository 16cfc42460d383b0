"""The WebSockets of DESIGN.md §4: `/api/v1/runs/{run_id}/live` and `/api/v1/live`.

Each connection listens to the feed first and reads storage second, so a
change can only land after the snapshot's read (and be diffed away) or
wake the next read: never in between. Messages go out through an `Outbox`:
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
from tracehouse.query_api.live import ListSession, Message, RunSession
from tracehouse.query_api.routes import FilterDep, NotFound, ProjectDep
from tracehouse.query_api.runs import RunTree, TreeCache, changed_runs, run_tree
from tracehouse.query_api.store import Store

router = APIRouter(prefix="/api/v1")

# RFC 6455's policy violation: the client fell too far behind.
TOO_SLOW = 1008


class Outbox:
    """A client's bounded queue of messages and the task that sends them."""

    def __init__(self, ws: WebSocket, size: int) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(size)
        self.overflowed = False

    def put(self, messages: list[Message]) -> bool:
        """Queue messages; False (and the client is to be dropped) if they do not fit."""
        for message in messages:
            try:
                self._queue.put_nowait(message)
            except asyncio.QueueFull:
                self.overflowed = True
                return False
        return True

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
        else:
            await ws.close()
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, WebSocketDisconnect):
            raise result


def _state(ws: WebSocket) -> tuple[Store, TreeCache, Feed]:
    state: Any = ws.app.state
    return state.store, state.trees, state.feed


@router.websocket("/runs/{run_id}/live")
async def live_run(ws: WebSocket, run_id: str, project: ProjectDep) -> None:
    """The run as it happens: a snapshot, then step and text events, then `run_finished`."""
    store, trees, feed = _state(ws)
    # Refused before the handshake completes, so the client gets the HTTP
    # answer (422, 404) with the error envelope, as from the REST routes.
    wanted = params.run_id(run_id)
    trace = await run_in_threadpool(store.find_trace, project, wanted)
    if trace is None:
        raise NotFound(f"no run {run_id}")
    with feed.listen(project, trace) as listener:
        session = RunSession()
        tree, chunks = await _read_run(store, trees, project, wanted, trace, session)
        if tree is None:  # a step's id, not a run's
            raise NotFound(f"no run {run_id}")
        await ws.accept()

        async def watch(outbox: Outbox) -> None:
            if not outbox.put(session.snapshot(tree, chunks)):
                return
            while not session.finished:
                await listener.wait()
                now, more = await _read_run(store, trees, project, wanted, trace, session)
                if now is None or not outbox.put(session.changes(now, more)):
                    return

        await _serve(ws, "run", watch)


async def _read_run(
    store: Store, trees: TreeCache, project: str, run_id: str, trace: str, session: RunSession
) -> tuple[RunTree | None, list[Any]]:
    # Chunks are read on from a little before the newest one told (or the
    # oldest one whose step is not known yet): one that committed late with
    # an earlier arrival time is still found.
    since = max(session.arrived_ns - 5_000_000_000, 0)
    tree = await run_in_threadpool(run_tree, store, project, run_id, trees)
    chunks = await run_in_threadpool(store.chunks, project, trace, since)
    return tree, chunks


@router.websocket("/live")
async def live_list(ws: WebSocket, project: ProjectDep, f: FilterDep) -> None:
    """The run list as it changes: `run_started`, `run_updated`, `run_finished`."""
    store, trees, feed = _state(ws)
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

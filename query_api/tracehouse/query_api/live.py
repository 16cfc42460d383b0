"""What a live client is told: the messages of DESIGN.md §4's WebSockets. Pure: no I/O.

A session remembers what its client was last told and turns each fresh
read of the run (or of the changed runs, for the list) into the messages
that bring the client up to date. Because every message comes from
comparing two reads of storage, nothing is sent twice and nothing falls
between the snapshot and the first event, however the changes arrived.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tracehouse.query_api import views
from tracehouse.query_api.assembly import Chunk, RunHeader, Step, ended_ns
from tracehouse.query_api.runs import RunTree
from tracehouse.schema.rows import Status

Message = dict[str, Any]

_TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


def _steps(root: Step) -> Iterator[Step]:
    """Every step below the root."""
    stack = list(root.children)
    while stack:
        step = stack.pop()
        yield step
        stack.extend(step.children)


def _step_message(kind: str, step: Step) -> Message:
    return {"type": kind, "step_id": step.step_id, "step": views.step_view(step, 0)}


def _ended(step: Step) -> Message:
    failed = step.row.status in (Status.FAILED, Status.CANCELLED)
    return _step_message("step_failed" if failed else "step_finished", step)


class RunSession:
    """One client watching one run (a top-level run or a sub-run)."""

    def __init__(self) -> None:
        self._status: dict[str, str] = {}  # step id → status last told
        self._chunks: set[tuple[str, str, int, int]] = set()
        self.arrived_ns = 0  # the newest chunk's arrival: read on from a little before it
        self.finished = False

    def snapshot(self, tree: RunTree, chunks: Sequence[Chunk]) -> list[Message]:
        """The run as it stands, then `run_finished` if it is over."""
        steps = list(_steps(tree.root))
        self._status = {s.step_id: s.row.status for s in steps}
        ids = set(self._status) | {tree.root.step_id}
        streams: dict[str, dict[str, str]] = {}
        for chunk in sorted(self._new(chunks, ids), key=lambda c: (c.place, c.at_ns)):
            channels = streams.setdefault(chunk.step_id, {})
            channels[chunk.channel] = channels.get(chunk.channel, "") + chunk.text
        snapshot = {
            "type": "snapshot",
            "run": views.run_view(tree.run),
            "root": views.step_view(tree.root, None),
            # Text streamed so far, by step and channel (an addition to §4): a
            # client that connects mid-run starts with everything sent.
            "streams": streams,
        }
        return [snapshot, *self._finish(tree.run)]

    def changes(self, tree: RunTree, chunks: Sequence[Chunk]) -> list[Message]:
        """What happened since the last call, in order: starts, text, ends, the run's end."""
        if self.finished:
            return []
        started: list[Step] = []
        ended: list[Step] = []
        for step in _steps(tree.root):
            told = self._status.get(step.step_id)
            status = step.row.status
            if told == status:
                continue
            self._status[step.step_id] = status
            if told is None:
                started.append(step)
            if status in _TERMINAL and told not in _TERMINAL:
                ended.append(step)
        ids = set(self._status) | {tree.root.step_id}
        messages = [_step_message("step_started", s) for s in sorted(started, key=_start)]
        messages += [
            {"type": "output_delta", "step_id": c.step_id, "channel": c.channel, "text": c.text}
            for c in self._new(chunks, ids)
        ]
        messages += [_ended(s) for s in sorted(ended, key=_end)]
        return messages + self._finish(tree.run)

    def _new(self, chunks: Sequence[Chunk], ids: set[str]) -> list[Chunk]:
        """Chunks of this run's steps not told yet, in stream order.

        A chunk of a step not known yet (its text came before any span of
        it) is kept for later: reading goes on from no later than it.
        """
        fresh = []
        told = self.arrived_ns
        waiting: int | None = None
        for chunk in chunks:
            if chunk.step_id not in ids:
                waiting = min(waiting or chunk.arrived_ns, chunk.arrived_ns)
                continue
            key = (chunk.step_id, chunk.channel, chunk.place, chunk.at_ns)
            if key not in self._chunks:
                self._chunks.add(key)
                fresh.append(chunk)
            told = max(told, chunk.arrived_ns)
        self.arrived_ns = told if waiting is None else min(told, waiting)
        return sorted(fresh, key=lambda c: (c.at_ns, c.place))

    def _finish(self, run: RunHeader) -> list[Message]:
        if run.status not in _TERMINAL:
            return []
        self.finished = True
        return [{"type": "run_finished", "run": views.run_view(run)}]


def _start(step: Step) -> tuple[int, int]:
    return step.row.start_ns, step.row.export_index


def _end(step: Step) -> int:
    return ended_ns(step.row) or step.row.start_ns


class ListSession:
    """One client watching the run list (with the list's filters)."""

    def __init__(self, connected_ns: int) -> None:
        self._connected_ns = connected_ns
        self._told: dict[str, RunHeader] = {}

    def changes(self, runs: Sequence[RunHeader]) -> list[Message]:
        """Messages for runs that changed; a run started before the client came is updated."""
        messages: list[Message] = []
        for run in sorted(runs, key=lambda r: (r.started_ns, r.run_id)):
            before = self._told.get(run.run_id)
            if before == run:
                continue
            self._told[run.run_id] = run
            view = views.run_view(run)
            if before is None and run.started_ns >= self._connected_ns:
                messages.append({"type": "run_started", "run": view})
            elif run.status not in _TERMINAL or (before and before.status in _TERMINAL):
                messages.append({"type": "run_updated", "run": view})
            if run.status in _TERMINAL and (before is None or before.status not in _TERMINAL):
                messages.append({"type": "run_finished", "run": view})
        return messages

"""Runs and step trees: fetch from the store, assemble, resolve sub-run parents.

Between the routes and the store: each function is a whole answer to one
question the API is asked, in the project of the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Any, NamedTuple

from tracehouse.query_api.assembly import (
    RunHeader,
    Step,
    attach_runs,
    build_tree,
    find,
    stand_in_root,
)
from tracehouse.query_api.sql import RunFilter
from tracehouse.query_api.store import RunKey, Store


class RunTree(NamedTuple):
    run: RunHeader
    root: Step


# What a cached tree was built from (Store.trace_version): anything of its
# trace arriving changes it.
Version = tuple[int, int, int, bool]


class TreeCache:
    """Assembled trees, kept while nothing of their trace has arrived.

    A big run is read in many requests (its first level, then a branch at a
    time); assembling it once saves the rest from reading every span again,
    and checking its trace's version (two counts and the newest arrival,
    off the primary key) saves them from summing every span for a header.
    Bounded by steps.
    """

    def __init__(self, max_steps: int) -> None:
        self._max_steps = max_steps
        self._steps = 0
        self._trees: OrderedDict[tuple[str, str], tuple[Version, RunTree]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, project: str, trace_id: str, version: Version) -> RunTree | None:
        with self._lock:
            cached = self._trees.get((project, trace_id))
            if cached is None or cached[0] != version:
                return None
            self._trees.move_to_end((project, trace_id))
            return cached[1]

    def put(self, project: str, version: Version, tree: RunTree) -> None:
        size = tree.root.descendants + 1
        if size > self._max_steps:
            return
        with self._lock:
            old = self._trees.pop((project, tree.run.trace_id), None)
            self._steps += size - (old[1].root.descendants + 1 if old else 0)
            self._trees[(project, tree.run.trace_id)] = (version, tree)
            while self._steps > self._max_steps:
                _, (_, evicted) = self._trees.popitem(last=False)
                self._steps -= evicted.root.descendants + 1


def trace_tree(
    store: Store,
    project: str,
    trace_id: str,
    *,
    cache: TreeCache | None = None,
    resolve_parent: bool = True,
) -> RunTree | None:
    """The whole tree of a trace under its top-level run."""
    # Read before the rows: a tree cached under it is never older than it says.
    version = store.trace_version(project, trace_id) if cache else None
    if cache and version and (cached := cache.get(project, trace_id, version)):
        return cached
    top = store.top_runs(project, [trace_id]).get(trace_id)
    if top is None:
        return None
    if resolve_parent:
        top = with_parent(store, project, top)
    rows = store.trace_rows(project, trace_id)
    root_row = next((r for r in rows if r.span_id == top.run_id), None)
    if root_row is None:
        root_row = stand_in_root(top.run_id, top.name, top.status, rows)
    tree = build_tree(rows, root_row)
    attach_runs(tree, top)
    # A parent in another trace that has not arrived yet is looked for again
    # next time: its arrival changes this trace's version in nothing.
    unresolved = top.parent_link is not None and top.parent_run_id is None
    if cache and version and not unresolved:
        cache.put(project, version, RunTree(top, tree))
    return RunTree(top, tree)


def run_tree(
    store: Store,
    project: str,
    run_id: str,
    cache: TreeCache | None = None,
    trace_id: str | None = None,
) -> RunTree | None:
    """The tree of a run: a top-level run (by run or trace id) or any sub-run.

    `trace_id`, when the caller knows it, saves looking it up.
    """
    trace_id = trace_id or store.find_trace(project, run_id)
    if trace_id is None:
        return None
    whole = trace_tree(store, project, trace_id, cache=cache)
    if whole is None or run_id in (trace_id, whole.run.run_id):
        return whole
    found = find(whole.root, run_id)
    if found is None or found[0].run is None:
        return None  # a step, not a run
    return RunTree(found[0].run, found[0])


def run_header(store: Store, project: str, run_id: str) -> RunHeader | None:
    tree = run_tree(store, project, run_id)
    return tree.run if tree else None


def with_parent(store: Store, project: str, top: RunHeader) -> RunHeader:
    """A top-level run whose root links into another run is that run's sub-run."""
    if top.parent_link is None:
        return top
    trace_id, span_id = top.parent_link
    # One hop only: the linked run's own parent does not change this answer,
    # and two traces linking each other must not send us round in circles.
    linked = (
        trace_tree(store, project, trace_id, resolve_parent=False)
        if trace_id != top.trace_id
        else None
    )
    found = find(linked.root, span_id) if linked else None
    return replace(top, parent_run_id=found[1].run_id) if found else top


class RunPage(NamedTuple):
    runs: list[RunHeader]
    counts: dict[str, int]
    next_cursor: tuple[int, str] | None


def run_page(
    store: Store,
    project: str,
    f: RunFilter,
    cursor: tuple[int, str] | None,
    limit: int,
    cache: TreeCache | None = None,
) -> RunPage:
    """One page of the run list, newest first, with the status counts of the whole list."""
    keys, counts = store.run_page(project, f, cursor, limit)
    page = keys[:limit]
    more = len(keys) > limit
    next_cursor = (page[-1].started_ns, page[-1].run_id) if more and page else None
    return RunPage(_headers(store, project, page, cache), counts, next_cursor)


# Enough for every run of a few hundred traces, sub-runs included.
_CHANGED_LIMIT = 100_000


def changed_runs(
    store: Store, project: str, f: RunFilter, cache: TreeCache | None = None
) -> list[RunHeader]:
    """The runs of `f.traces` that the list filtered by `f` shows, newest first."""
    keys = store.list_runs(project, f, None, _CHANGED_LIMIT)
    return _headers(store, project, keys, cache)


def _headers(
    store: Store, project: str, keys: list[RunKey], cache: TreeCache | None
) -> list[RunHeader]:
    trees: dict[str, RunTree | None] = {}
    runs = []
    for trace, run_id, _, header in keys:
        if header:
            runs.append(with_parent(store, project, header))
            continue
        if trace not in trees:
            trees[trace] = trace_tree(store, project, trace, cache=cache)
        whole = trees[trace]
        found = find(whole.root, run_id) if whole else None
        if found and found[0].run:
            runs.append(found[0].run)
    return runs


class StepRecord(NamedTuple):
    step: Step
    row: dict[str, Any]  # the stored span, by column
    logs: list[dict[str, Any]]  # log records linked to it


def run_step(
    store: Store, project: str, run_id: str, step_id: str, cache: TreeCache | None = None
) -> StepRecord | None:
    """A step of a run (its own, or of a sub-run below it) and everything stored of it."""
    tree = run_tree(store, project, run_id, cache)
    found = find(tree.root, step_id) if tree else None
    if tree is None or found is None:
        return None
    row = store.step(project, tree.run.trace_id, step_id)
    if row is None:
        return None
    return StepRecord(found[0], row, store.step_logs(project, tree.run.trace_id, step_id))

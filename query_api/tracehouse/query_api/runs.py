"""Runs and step trees: fetch from the store, assemble, resolve sub-run parents.

Between the routes and the store: each function is a whole answer to one
question the API is asked, in the project of the caller.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NamedTuple

from tracehouse.query_api import levels
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
from tracehouse.schema.clickhouse import StorageError

log = logging.getLogger(__name__)


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
    A big run's first level read alone (levels.py) is kept apart: it holds
    no more than that level. Bounded by steps held.
    """

    def __init__(self, max_steps: int) -> None:
        self._max_steps = max_steps
        self._steps = 0
        self._trees: OrderedDict[tuple[str, str, bool], tuple[Version, RunTree]] = OrderedDict()
        self._ahead: set[tuple[str, str]] = set()  # traces being read ahead (read_whole)
        self._lock = threading.Lock()

    def get(
        self, project: str, trace_id: str, version: Version, level: bool = False
    ) -> RunTree | None:
        """The trace's whole tree (or with `level`, its first level alone) as of `version`."""
        key = (project, trace_id, level)
        with self._lock:
            cached = self._trees.get(key)
            if cached is None or cached[0] != version:
                return None
            self._trees.move_to_end(key)
            return cached[1]

    def put(self, project: str, version: Version, tree: RunTree, level: bool = False) -> None:
        size = _held(tree, level)
        if size > self._max_steps:
            return
        key = (project, tree.run.trace_id, level)
        with self._lock:
            old = self._trees.pop(key, None)
            self._steps += size - (_held(old[1], level) if old else 0)
            self._trees[key] = (version, tree)
            while self._steps > self._max_steps:
                (_, _, was_level), (_, evicted) = self._trees.popitem(last=False)
                self._steps -= _held(evicted, was_level)

    @contextmanager
    def reading_ahead(self, project: str, trace_id: str) -> Iterator[bool]:
        """Whether the caller is to read this trace ahead: one reader at a time."""
        key = (project, trace_id)
        with self._lock:
            first = key not in self._ahead
            self._ahead.add(key)
        try:
            yield first
        finally:
            if first:
                with self._lock:
                    self._ahead.discard(key)


def _held(tree: RunTree, level: bool) -> int:
    return len(tree.root.children) + 1 if level else tree.root.descendants + 1


def trace_tree(
    store: Store,
    project: str,
    trace_id: str,
    *,
    cache: TreeCache | None = None,
    resolve_parent: bool = True,
    version: Version | None = None,
) -> RunTree | None:
    """The whole tree of a trace under its top-level run.

    `version`: the trace's, where the caller has just read it.
    """
    # Read before the rows: a tree cached under it is never older than it says.
    if cache and version is None:
        version = store.trace_version(project, trace_id)
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
    return _whole(store, project, trace_id, run_id, cache)


def _run_in(whole: RunTree, run_id: str) -> RunTree | None:
    """The run of this id in a trace's whole tree: the top-level run, or a sub-run."""
    if run_id in (whole.run.trace_id, whole.run.run_id):
        return whole
    found = find(whole.root, run_id)
    if found is None or found[0].run is None:
        return None  # a step, not a run
    return RunTree(found[0].run, found[0])


# Steps from which a top-level run's first level is read alone (levels.py),
# when its tree is not cached. Below it the whole tree is assembled (and
# cached) at once, as a level read alone would have it read again after its
# answer: whole, 35 ms at 1,000 steps, 53 at 5,000, 78 at 10,000; a level
# alone 32, 35, 39 (benchmarks/level_sizes.py). From 5,000 steps a whole
# tree's first read nears 100 ms at 20M spans, where finding a run costs more.
LEVELS_FROM = 5_000


def first_level(
    store: Store, project: str, run_id: str, cache: TreeCache | None = None
) -> RunTree | None:
    """A run's tree, of which the caller shows only the root and its first level.

    A big top-level run not yet cached is read a level at a time: its first
    level in ~1/6 of the time of its whole tree (0.8 s at 100,000 steps).
    Anything else is its whole tree, as run_tree gives it.
    """
    trace_id = store.find_trace(project, run_id)
    if trace_id is None:
        return None
    version = store.trace_version(project, trace_id)
    if version[0] < LEVELS_FROM or (cache and cache.get(project, trace_id, version)):
        return _whole(store, project, trace_id, run_id, cache, version)
    kept = cache.get(project, trace_id, version, level=True) if cache else None
    if kept and run_id in (trace_id, kept.run.run_id):
        return kept
    # The run's row and the trace's shape at once, each on a read client and
    # a core of its own (~14 and ~40 ms at 100,000 steps, one after the other).
    with ThreadPoolExecutor(1) as reader:
        shaped = reader.submit(store.trace_shape, project, trace_id)
        run = store.top_run_rows(project, [trace_id]).get(trace_id)
        shape = shaped.result()
    level = None
    # The root is the run's (a sub-run, asked by its own id, is not read here).
    if run is not None and run_id in (trace_id, run.run_id) and len(run.run_id) == 16:
        level = levels.first_level(shape, run.run_id)
    if run is None or level is None:
        return _whole(store, project, trace_id, run_id, cache, version)
    rows = {row.span_id: row for row in store.trace_steps(project, trace_id, level.span_ids())}
    top = store.header(run, levels.totals_row(level, trace_id, rows))
    top = with_parent(store, project, top)
    root = levels.level_tree(level, rows, top)
    if root is None:
        return _whole(store, project, trace_id, run_id, cache, version)
    tree = RunTree(top, root)
    unresolved = top.parent_link is not None and top.parent_run_id is None
    if cache and not unresolved:  # as trace_tree keeps whole trees
        cache.put(project, version, tree, level=True)
    return tree


def _whole(
    store: Store,
    project: str,
    trace_id: str,
    run_id: str,
    cache: TreeCache | None,
    version: Version | None = None,
) -> RunTree | None:
    """The run's tree in its trace's whole tree (`version`: the trace's, if just read)."""
    whole = trace_tree(store, project, trace_id, cache=cache, version=version)
    return None if whole is None else _run_in(whole, run_id)


def read_whole(store: Store, project: str, tree: RunTree, cache: TreeCache) -> None:
    """Assemble and cache the whole tree behind a first level read alone, if it has
    branches: the ones a client opens next are then answered from the cache."""
    if not any(step.unread for step in tree.root.children):
        return
    with cache.reading_ahead(project, tree.run.trace_id) as first:
        if not first:
            return  # a request before this one is reading it
        try:
            trace_tree(store, project, tree.run.trace_id, cache=cache)
        except StorageError as exc:  # after the answer: nobody waits for it
            log.warning("a tree was not read ahead: %s", exc)


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

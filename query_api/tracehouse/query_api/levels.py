"""A big tree's first level, from its shape, without assembling the rest. Pure.

Assembling a tree takes ~4 µs a step of Python (assembly.py): 0.7 s for
100,000 steps, when a client opening a big run asks for its first level
only. Here every step comes as numbers (`sql.TRACE_SHAPE_SQL`), numpy
finds the first-level step each one is under, and folds what those steps
and the run's header need: counts, token and cost sums, and which steps
started or ended first, whose previews and models are read apart with the
first level's own rows. What it answers is what assembly.py would, for the
same rows (tests/test_levels.py); the few shapes it cannot answer (a cycle,
a root not stored, ids that are not 16 hex digits, a step that started
before the orphan it is under) go the whole way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from tracehouse.query_api.assembly import (
    NO_TOKENS,
    RunHeader,
    SpanRow,
    Step,
    Tokens,
    ended_ns,
    start_order,
    subrun_header,
)
from tracehouse.schema.rows import RUN_KINDS, StepKind

# The bits of TRACE_SHAPE_SQL's `flags`: ids that are not 16 hex digits, an
# LLM step, a graph node, still running, failed (or cancelled), a pending
# span only, a cost known.
FLAGS = ("odd", "llm", "node", "running", "failed", "pending", "costed")


def _flags(shape: np.ndarray) -> dict[str, np.ndarray]:
    return {name: (shape["flags"] & (1 << bit)) != 0 for bit, name in enumerate(FLAGS)}


def _one_each(shape: np.ndarray) -> np.ndarray:
    """Each step once: a pending span only until its span arrives (as the store's
    `_one_each` keeps rows). ClickHouse sorting 100,000 rows for it took ~10 ms."""
    pending = (shape["flags"] & (1 << FLAGS.index("pending"))) != 0
    if not pending.any():
        return shape
    keep = ~pending
    keep[pending] = ~np.isin(shape["id"][pending], shape["id"][keep])
    one_each: np.ndarray = shape[keep]
    return one_each


def span_number(span_id: str) -> int:
    """A 16-hex span id as TRACE_SHAPE_SQL reads it (`reinterpretAsUInt64(unhex(…))`)."""
    return int.from_bytes(bytes.fromhex(span_id), "little")


def span_hex(number: int) -> str:
    return int(number).to_bytes(8, "little").hex()


class Top(NamedTuple):
    """A first-level step: its row in the shape, and what the steps below it add up to."""

    row: int
    orphan: bool
    children: int
    node_children: bool  # a chain with graph nodes below it is a LangGraph subgraph
    descendants: int
    llm_steps: int
    tokens: Tokens
    cost_usd: float | None
    # The steps that may give its first and last LLM step (several when they tie).
    first_llm: tuple[int, ...]
    last_llm: tuple[int, ...]


class Totals(NamedTuple):
    """The header's sums over every step of the trace, as sql.TRACE_TOTALS_SQL gives them."""

    spans: int
    llm_steps: int
    tokens: Tokens
    cost_usd: float | None
    first_error: int | None  # the row of the first failed step


class Level(NamedTuple):
    ids: np.ndarray
    root: int  # the root's row
    tops: list[Top]
    totals: Totals

    def span_ids(self) -> list[str]:
        """Every step whose row the first level shows or reads a preview of."""
        rows = {self.root, *(t.row for t in self.tops)}
        for top in self.tops:
            rows.update(top.first_llm, top.last_llm)
        if self.totals.first_error is not None:
            rows.add(self.totals.first_error)
        return [span_hex(self.ids[row]) for row in sorted(rows)]


def first_level(shape: np.ndarray, root_id: str) -> Level | None:
    """The first level under the root, or None where assembly.py must answer."""
    shape = _one_each(shape)
    n = len(shape)
    if n == 0:
        return None
    flag = _flags(shape)
    ids, parents = np.ascontiguousarray(shape["id"]), np.ascontiguousarray(shape["parent"])
    if flag["odd"].any() or (ids == 0).any():
        return None
    roots = np.flatnonzero(ids == span_number(root_id))
    if len(roots) != 1:
        return None
    root = int(roots[0])
    parent = _parents(ids, parents)
    if parent is None:
        return None
    rows = np.arange(n)
    top = _heads(parent, root)
    if top is None:
        return None
    heads = np.flatnonzero(top == rows)
    heads = heads[heads != root]
    # assembly.py hangs what the root does not reach under it in start
    # order, each step with what is below it not yet hung: a step that
    # started before the orphan it is under is a first-level step of its
    # own there. Such trees (clocks apart) are left to it.
    start = shape["start"]
    orphaned = parent[top] != root
    if ((rows != top) & orphaned & (rows != root) & (start <= start[top])).any():
        return None

    llm, running = flag["llm"], flag["running"]
    below = (top != rows) & (rows != root)  # strictly below a first-level step
    # A child of a step: not of itself, and never the root (a root not yet
    # arrived stands for a span that may have a parent of its own).
    child = (parent >= 0) & (parent != rows) & (rows != root)

    def count(mask: np.ndarray, by: np.ndarray = top, weights: Any = None) -> np.ndarray:
        return np.bincount(by[mask], None if weights is None else weights[mask], minlength=n)

    def total(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
        # In integers: float weights lose units past 2**53 tokens.
        sums = np.zeros(n, dtype=np.int64)
        np.add.at(sums, top[mask], values[mask].astype(np.int64))
        return sums

    ended_llm = below & llm & ~running
    llm_tokens = [total(ended_llm, shape[f"{k}_tokens"]) for k in ("input", "output", "total")]
    costed = below & flag["costed"]
    costs, cost_count = count(costed, weights=shape["cost"]), count(costed)
    first_llm = _groups(below & llm, top, start, np.minimum)
    last_llm = _groups(ended_llm, top, shape["end"], np.maximum)
    children = count(child, np.maximum(parent, 0))
    nodes = count(child & flag["node"], np.maximum(parent, 0))
    descendants, llm_steps = count(below), count(ended_llm)
    tops = [
        Top(
            row=h,
            orphan=bool(orphaned[h]),
            children=int(children[h]),
            node_children=bool(nodes[h]),
            descendants=int(descendants[h]),
            llm_steps=int(llm_steps[h]),
            tokens=Tokens(*(int(t[h]) for t in llm_tokens)),
            cost_usd=float(costs[h]) if cost_count[h] else None,
            first_llm=first_llm.get(h, ()),
            last_llm=last_llm.get(h, ()),
        )
        for h in heads.tolist()
    ]
    return Level(ids, root, tops, _totals(shape, flag))


def _parents(ids: np.ndarray, parents: np.ndarray) -> np.ndarray | None:
    """Each step's parent, by row (-1: not stored); None if two steps share an id."""
    order = np.argsort(ids)
    ordered = ids[order]
    if (ordered[1:] == ordered[:-1]).any():
        return None
    # Looked up in order: ~4 times faster than 100,000 lookups at random.
    asked = np.argsort(parents)
    found = np.empty(len(ids), dtype=np.int64)
    found[asked] = np.minimum(np.searchsorted(ordered, parents[asked]), len(ids) - 1)
    return np.where(ordered[found] == parents, order[found], -1)


def _heads(parent: np.ndarray, root: int) -> np.ndarray | None:
    """For each step, the first-level step it is under; None for a cycle.

    Each step points at its parent, and first-level steps (under the root,
    or orphans: parent not stored) at themselves; jumping to the pointer's
    pointer doubles how far each one points, until every step points at its
    first-level step. A cycle of odd length never settles, and one of even
    length settles on steps whose parent is another step.
    """
    rows = np.arange(len(parent))
    top = np.where((parent == root) | (parent == -1), rows, parent)
    top[root] = root
    for _ in range(len(parent).bit_length() + 1):
        further = top[top]
        if np.array_equal(further, top):
            break
        top = further
    else:
        return None
    heads = np.flatnonzero(top == rows)
    # A step that is its own parent is an orphan to assembly.py too.
    settled = np.isin(parent[heads], (root, -1)) | (parent[heads] == heads) | (heads == root)
    return top if settled.all() else None


def _groups(
    mask: np.ndarray, by: np.ndarray, values: np.ndarray, extreme: np.ufunc
) -> dict[int, tuple[int, ...]]:
    """Per group, the rows under `mask` whose value is its least (or greatest)."""
    rows = np.flatnonzero(mask)
    if not len(rows):
        return {}
    best = np.zeros(len(by), dtype=np.int64)
    best[by[rows]] = values[rows]  # some member's value, then the extreme of all
    extreme.at(best, by[rows], values[rows].astype(np.int64))
    found: dict[int, list[int]] = {}
    for row in rows[values[rows] == best[by[rows]]].tolist():
        found.setdefault(int(by[row]), []).append(row)
    return {group: tuple(members) for group, members in found.items()}


def _totals(shape: np.ndarray, flag: dict[str, np.ndarray]) -> Totals:
    ended = ~flag["pending"]
    counted = ended & flag["llm"]
    costed = ended & flag["costed"]
    failed = np.flatnonzero(flag["failed"])
    tokens = (int(shape[f"{k}_tokens"][counted].sum()) for k in ("input", "output", "total"))
    return Totals(
        spans=len(shape),
        llm_steps=int(counted.sum()),
        tokens=Tokens(*tokens),
        cost_usd=float(shape["cost"][costed].sum()) if costed.any() else None,
        first_error=int(failed[np.argmin(shape["start"][failed])]) if len(failed) else None,
    )


def level_tree(level: Level, rows: Mapping[str, SpanRow], top: RunHeader) -> Step | None:
    """The root and its first level as Steps, from the rows `level.span_ids()` named."""
    if any(span_hex(level.ids[r]) not in rows for r in (level.root, *(t.row for t in level.tops))):
        return None  # a row not read (it cannot leave once stored, but be safe)
    root = rows[span_hex(level.ids[level.root])]

    def row(number: int) -> SpanRow:
        return rows[span_hex(level.ids[number])]

    steps = []
    for t in level.tops:
        step = Step(
            row(t.row), root.span_id, orphan=t.orphan, unread=t.children,
            descendants=t.descendants, llm_steps=t.llm_steps,
            llm_tokens=t.tokens if t.llm_steps else NO_TOKENS, cost_usd=t.cost_usd,
            first_llm=min(((r.start_ns, r.input_preview) for r in map(row, t.first_llm)),
                          default=None),
            last_llm=max(((ended_ns(r) or 0, r.output_preview, r.model)
                          for r in map(row, t.last_llm)), default=None),
        )  # fmt: skip
        if step.row.kind in RUN_KINDS or (step.row.kind == StepKind.CHAIN and t.node_children):
            step.run = subrun_header(step, top, top.trace_id)
        steps.append(step)
    steps.sort(key=lambda s: start_order(s.row))
    return Step(root, None, children=steps, run=top, descendants=len(level.ids) - 1)


def totals_row(level: Level, trace_id: str, rows: Mapping[str, SpanRow]) -> tuple[Any, ...]:
    """The trace's totals as a row of sql.TRACE_TOTALS_SQL, for the store's header."""
    t = level.totals
    error = ("", "")
    if t.first_error is not None:
        failed = rows.get(span_hex(level.ids[t.first_error]))
        error = (failed.error_type, failed.error_message) if failed else error
    tokens = t.tokens
    return (trace_id, t.spans, t.llm_steps, tokens.input, tokens.output, tokens.total,
            t.cost_usd, error)  # fmt: skip

"""Stored rows → run headers and step trees. Pure: no SQL, no I/O.

A trace's spans come in as `SpanRow`s in any order, possibly with parents
missing (not arrived yet) or in cycles (hostile input); the tree is built
iteratively from the run's root, steps whose parent is unknown are hung
under the root and flagged `orphan`, and a cycle is cut where it is found.
Sub-runs (agent and workflow steps, and LangGraph subgraphs: a chain whose
children are graph nodes) get a header of their own, computed from the
steps below them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from tracehouse.schema.rows import RUN_KINDS, Status, StepKind


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    total: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input, self.output + other.output, self.total + other.total
        )


# Shared by every step that has none to count (most): immutable, so one will do.
NO_TOKENS = Tokens()


@dataclass(frozen=True, slots=True)
class Error:
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class RunHeader:
    run_id: str
    trace_id: str
    parent_run_id: str | None
    name: str
    kind: str
    status: str
    trigger: str
    version: str
    service: str
    session_id: str
    started_ns: int
    ended_ns: int | None
    step_count: int
    tokens: Tokens
    cost_usd: float | None
    model: str
    error: Error | None
    input_preview: str
    output_preview: str
    # (trace id, span id) a top-level run's root links to: it is a sub-run of
    # the run holding that span, in another trace.
    parent_link: tuple[str, str] | None = None
    # Running, and nothing of it has arrived for a long while: its process
    # may have died. Still `running`: nobody said it failed.
    stale: bool = False
    # When a span of its trace last arrived. Not part of what a header says
    # (two stores of the same spans agree on everything else).
    last_seen_ns: int = field(default=0, compare=False)


class SpanRow(NamedTuple):
    """One stored span as the read side needs it (previews, not whole values).

    A NamedTuple, not a frozen dataclass: a big tree makes one per span, and
    a frozen dataclass sets each of its 20 fields through `object.__setattr__`
    (~6.5 against ~1 µs a row; 0.65 s of a 100,000-step tree's first read).
    """

    span_id: str
    parent_id: str
    kind: str
    name: str
    status: str
    start_ns: int
    duration_ns: int
    export_index: int  # place in its export: orders steps whose start times tie
    model: str
    tokens: Tokens
    cost_usd: float | None
    error_type: str
    error_message: str
    input_preview: str
    output_preview: str
    trigger: str
    version: str
    session_id: str
    service: str
    warnings: tuple[str, ...] = ()  # what the collector changed or doubts of the span


class Chunk(NamedTuple):
    """A piece of text a step streamed (output or reasoning), as the client helper sent it."""

    step_id: str
    channel: str
    text: str
    at_ns: int
    place: int  # its index in the stream
    arrived_ns: int  # when it reached ClickHouse


@dataclass(slots=True)
class Step:
    row: SpanRow
    parent_step_id: str | None
    orphan: bool = False
    children: list[Step] = field(default_factory=list)
    run: RunHeader | None = None  # set for the tree's root run and its sub-runs
    # Children counted but not read (levels.py reads a big tree a level at a
    # time): such a step is shown without them.
    unread: int = 0
    # Of everything below this step:
    descendants: int = 0
    llm_steps: int = 0
    llm_tokens: Tokens = NO_TOKENS
    cost_usd: float | None = None
    first_llm: tuple[int, str] | None = None  # (start, input) of the first LLM step
    last_llm: tuple[int, str, str] | None = None  # (end, output, model) of the last

    @property
    def step_id(self) -> str:
        return self.row.span_id


def ended_ns(row: SpanRow) -> int | None:
    return None if row.status == Status.RUNNING else row.start_ns + row.duration_ns


def build_tree(rows: Iterable[SpanRow], root: SpanRow) -> Step:
    """The step tree under `root` (a stored span, or a stand-in for one not arrived)."""
    by_id = {row.span_id: row for row in rows if row.span_id != root.span_id}
    # Sorted once, so that every step's children are listed in start order.
    ordered = sorted(by_id.values(), key=start_order)
    children: dict[str, list[SpanRow]] = defaultdict(list)
    for row in ordered:
        children[row.parent_id].append(row)
    tree = Step(root, None)
    seen = {root.span_id}
    _attach(tree, children, seen)
    # What the walk from the root did not reach: parents not arrived, or cycles.
    for row in ordered:
        if row.span_id not in seen:
            seen.add(row.span_id)
            orphan = Step(row, tree.step_id, orphan=True)
            tree.children.append(orphan)
            _attach(orphan, children, seen)
    tree.children.sort(key=lambda s: start_order(s.row))
    _summarise(tree)
    return tree


def start_order(row: SpanRow) -> tuple[int, int, str]:
    return row.start_ns, row.export_index, row.span_id


def _attach(top: Step, children: dict[str, list[SpanRow]], seen: set[str]) -> None:
    """Hang under `top` every step below it, each child list already in start order."""
    stack = [top]
    while stack:
        step = stack.pop()
        below = children.get(step.step_id)
        if not below:  # a leaf, as most steps are
            continue
        for row in below:
            if row.span_id in seen:  # a cycle: this span is its own ancestor
                continue
            seen.add(row.span_id)
            child = Step(row, step.step_id)
            step.children.append(child)
            stack.append(child)


def _post_order(tree: Step) -> list[Step]:
    order, stack = [], [tree]
    while stack:
        step = stack.pop()
        order.append(step)
        stack.extend(step.children)
    order.reverse()
    return order


def _summarise(tree: Step) -> None:
    """Fill each step's aggregates over the steps below it, bottom up."""
    for step in _post_order(tree):
        for child in step.children:
            row = child.row
            step.descendants += 1 + child.descendants
            # Most children are leaves with nothing to pass up: skipping the
            # empty sums halves the time of a 100,000-step tree.
            if child.llm_steps:
                step.llm_steps += child.llm_steps
                step.llm_tokens += child.llm_tokens
            if row.cost_usd is not None or child.cost_usd is not None:
                step.cost_usd = _add_cost(_add_cost(step.cost_usd, row.cost_usd), child.cost_usd)
            if child.first_llm is not None:
                step.first_llm = _earlier(step.first_llm, child.first_llm)
            if child.last_llm is not None:
                step.last_llm = _later(step.last_llm, child.last_llm)
            if row.kind != StepKind.LLM:
                continue
            step.first_llm = _earlier(step.first_llm, (row.start_ns, row.input_preview))
            end = ended_ns(row)
            if end is not None:  # a started LLM call has no tokens or output yet
                step.llm_steps += 1
                step.llm_tokens += row.tokens
                step.last_llm = _later(step.last_llm, (end, row.output_preview, row.model))


def _add_cost(a: float | None, b: float | None) -> float | None:
    return a if b is None else b if a is None else a + b


def _earlier(a: tuple[int, str] | None, b: tuple[int, str] | None) -> tuple[int, str] | None:
    return b if a is None else a if b is None else min(a, b)


def _later(
    a: tuple[int, str, str] | None, b: tuple[int, str, str] | None
) -> tuple[int, str, str] | None:
    return b if a is None else a if b is None else max(a, b)


def is_run(step: Step) -> bool:
    kind = step.row.kind
    if kind in RUN_KINDS:
        return True
    # A LangGraph subgraph is a chain span whose children are the graph's nodes.
    return kind == StepKind.CHAIN and any(c.row.kind == StepKind.NODE for c in step.children)


def attach_runs(tree: Step, top: RunHeader) -> None:
    """Give the tree's root the top-level header and every sub-run a header of its own."""
    tree.run = top
    stack: list[tuple[Step, RunHeader]] = [(child, top) for child in tree.children]
    while stack:
        step, parent_run = stack.pop()
        if is_run(step):
            step.run = subrun_header(step, parent_run, top.trace_id)
            parent_run = step.run
        stack.extend((child, parent_run) for child in step.children)


def subrun_header(step: Step, parent: RunHeader, trace_id: str) -> RunHeader:
    row = step.row
    kind = row.kind if row.kind in RUN_KINDS else StepKind.WORKFLOW
    failed = row.status in (Status.FAILED, Status.CANCELLED)
    return RunHeader(
        run_id=row.span_id,
        trace_id=trace_id,
        parent_run_id=parent.run_id,
        name=row.name,
        kind=kind,
        status=row.status,
        trigger=row.trigger or "subagent",
        version=row.version,
        service=row.service,
        session_id=row.session_id or parent.session_id,
        started_ns=row.start_ns,
        ended_ns=ended_ns(row),
        step_count=step.descendants,
        tokens=step.llm_tokens if step.llm_steps else row.tokens,
        cost_usd=_add_cost(row.cost_usd, step.cost_usd),
        model=row.model or (step.last_llm[2] if step.last_llm else ""),
        error=Error(row.error_type, row.error_message) if failed else None,
        input_preview=row.input_preview or (step.first_llm[1] if step.first_llm else ""),
        output_preview=row.output_preview or (step.last_llm[1] if step.last_llm else ""),
        stale=parent.stale and row.status == Status.RUNNING,
        last_seen_ns=parent.last_seen_ns,
    )


def find(tree: Step, step_id: str) -> tuple[Step, RunHeader] | None:
    """The step with this id, and the run it belongs to (itself, if it is a run)."""
    assert tree.run is not None, "attach_runs first"
    stack = [(tree, tree.run)]
    while stack:
        step, run = stack.pop()
        run = step.run or run
        if step.step_id == step_id:
            return step, run
        stack.extend((child, run) for child in step.children)
    return None


def stand_in_root(run_id: str, name: str, status: str, rows: Sequence[SpanRow]) -> SpanRow:
    """A root for a run whose root span has not arrived: what its steps say of it."""
    start = min((r.start_ns for r in rows), default=0)
    return SpanRow(
        span_id=run_id, parent_id="", kind=StepKind.SPAN, name=name, status=status,
        start_ns=start, duration_ns=0, export_index=0, model="", tokens=Tokens(), cost_usd=None,
        error_type="", error_message="", input_preview="", output_preview="",
        trigger="", version="", session_id="", service="",
    )  # fmt: skip

"""Pending spans: a step shows as started the moment it starts, and is superseded when it ends.

Pending spans are hand-built in Logfire's format (what the client helper
sends), written through the collector's decoder and writer into chDB, and
read back as the API reads runs.
"""

from __future__ import annotations

from itertools import permutations

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from builders import Runs, new_id, pending, set_value, span
from tracehouse.query_api.runs import run_page, run_step
from tracehouse.query_api.sql import RunFilter

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
TOOL = {"gen_ai.tool.name": "search", "gen_ai.tool.call.arguments": '{"q": "x"}'}


def _run() -> tuple[bytes, otlp.Span, otlp.Span]:
    trace, root, tool = new_id(16), new_id(8), new_id(8)
    return (
        trace,
        span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT),
        span("execute_tool search", trace, tool, root, start=2, end=5, attributes=TOOL),
    )


def test_a_started_run_and_tool_show_as_running_before_anything_ends(runs: Runs) -> None:
    trace, root, tool = _run()
    runs.send(pending(root), pending(tool))

    run, tree = runs.tree(trace)
    assert (run.run_id, run.name, run.kind, run.status) == (
        root.span_id.hex(), "helper", "agent", "running",
    )  # fmt: skip
    assert run.ended_ns is None
    assert run.step_count == 1
    [step] = tree.children
    assert (step.step_id, step.row.name, step.row.kind, step.row.status) == (
        tool.span_id.hex(), "search", "tool", "running",
    )  # fmt: skip
    assert step.row.input_preview == '{"q": "x"}'


def test_the_real_span_supersedes_its_pending_span(runs: Runs) -> None:
    trace, root, tool = _run()
    runs.send(pending(root), pending(tool))
    runs.send(tool)
    run, tree = runs.tree(trace)
    assert run.status == "running"
    assert [(s.step_id, s.row.status) for s in tree.children] == [(tool.span_id.hex(), "completed")]
    assert run.step_count == 1

    runs.send(root)
    run, tree = runs.tree(trace)
    assert (run.status, run.step_count) == ("completed", 1)
    assert run.ended_ns is not None


@pytest.mark.parametrize("order", list(permutations(range(4))))
def test_any_arrival_order_ends_the_same(runs: Runs, order: tuple[int, ...]) -> None:
    trace, root, tool = _run()
    sent = [pending(root), pending(tool), tool, root]
    for i in order:
        runs.send(sent[i])
    run, tree = runs.tree(trace)
    assert (run.status, run.name, run.step_count) == ("completed", "helper", 1)
    assert [(s.step_id, s.row.status) for s in tree.children] == [(tool.span_id.hex(), "completed")]


def test_a_pending_sub_agent_is_listed_once_and_its_detail_is_the_latest(runs: Runs) -> None:
    trace, root = new_id(16), new_id(8)
    outer = span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT)
    inner = span("invoke_agent scout", trace, new_id(8), root, start=1, end=8,
                 attributes={**AGENT, "gen_ai.agent.name": "scout"})  # fmt: skip
    runs.send(pending(outer), pending(inner))

    page = run_page(runs.store, "default", RunFilter(include_subruns=True), None, 50)
    assert sorted((r.name, r.status) for r in page.runs) == [
        ("helper", "running"), ("scout", "running"),
    ]  # fmt: skip
    found = run_step(runs.store, "default", root.hex(), inner.span_id.hex())
    assert found is not None
    assert found[1]["Pending"] == 1

    runs.send(inner)
    page = run_page(runs.store, "default", RunFilter(include_subruns=True), None, 50)
    assert sorted((r.name, r.status) for r in page.runs) == [
        ("helper", "running"), ("scout", "completed"),
    ]  # fmt: skip
    found = run_step(runs.store, "default", root.hex(), inner.span_id.hex())
    assert found is not None
    assert (found[0].row.status, found[1]["Pending"]) == ("completed", 0)


def test_a_pending_llm_call_adds_no_tokens_until_it_ends(runs: Runs) -> None:
    trace, root = new_id(16), new_id(8)
    chat = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5}  # fmt: skip
    first = span("chat", trace, new_id(8), root, start=1, end=2, attributes=chat)
    second = span("chat", trace, new_id(8), root, start=3, end=4, attributes=chat)
    runs.send(first, pending(second))
    assert runs.header(trace).tokens.total == 15
    runs.send(second)
    assert runs.header(trace).tokens.total == 30


def test_a_malformed_pending_span_is_kept_as_an_ordinary_span(runs: Runs) -> None:
    trace, root, tool = _run()
    odd = pending(tool)
    for pair in odd.attributes:
        if pair.key == "logfire.pending_parent_id":
            set_value(pair.value, "not-hex!")
    runs.send(root, odd)
    _, tree = runs.tree(trace)
    # Its parent (the tool span) never came: it hangs under the root, marked.
    [step] = tree.children
    assert (step.step_id, step.orphan, step.row.status) == (odd.span_id.hex(), True, "completed")

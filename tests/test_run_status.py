"""A run's header says what happened to the run, whatever order its spans come in.

Spans are hand-built and written through the collector's own decoder and
writer into real chDB (its materialized view included), then read back
through the query side, as the API will.
"""

from __future__ import annotations

from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from builders import Runs, new_id, span
from tracehouse.query_api.assembly import Step
from tracehouse.query_api.runs import run_tree

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}


def chat(tokens: tuple[int, int] = (10, 5), model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
    }


def test_a_run_is_running_under_its_root_id_until_the_root_arrives(runs: Runs) -> None:
    trace, root, tool = new_id(16), new_id(8), new_id(8)
    runs.send(
        span("chat gpt-4o", trace, new_id(8), root, start=1, end=2, attributes=chat()),
        span("execute_tool search", trace, tool, root, start=3, end=4,
             attributes={"gen_ai.tool.name": "search"}),
    )  # fmt: skip

    before = runs.header(trace)
    assert (before.run_id, before.status) == (root.hex(), "running")
    assert before.ended_ns is None
    assert before.step_count == 2
    assert before.tokens.total == 15

    runs.send(span("invoke_agent helper", trace, root, start=0, end=5, attributes=AGENT))

    after = runs.header(trace)
    assert (after.run_id, after.status, after.name, after.kind) == (
        root.hex(), "completed", "helper", "agent",
    )  # fmt: skip
    assert after.step_count == 2
    assert after.ended_ns is not None
    assert after.started_ns < after.ended_ns


def test_a_run_whose_own_span_never_comes_fails_with_its_step(runs: Runs) -> None:
    trace, root = new_id(16), new_id(8)
    runs.send(
        span("chat gpt-4o", trace, new_id(8), root, start=1, end=2, attributes=chat(),
             error="rate limited", events=[("exception", {"exception.type": "RateLimitError"})]),
    )  # fmt: skip
    header = runs.header(trace)
    assert (header.run_id, header.status) == (root.hex(), "failed")
    assert header.error is not None
    assert (header.error.type, header.error.message) == ("RateLimitError", "rate limited")


def test_a_wrapper_root_that_completed_around_a_failed_agent_is_a_failed_run(runs: Runs) -> None:
    trace, root, agent = new_id(16), new_id(8), new_id(8)
    runs.send(
        span("POST /chat", trace, root, start=0, end=9, attributes={"http.method": "POST"}),
        span("invoke_agent helper", trace, agent, root, start=1, end=8, attributes=AGENT,
             error="ValueError: boom"),
    )  # fmt: skip
    header = runs.header(trace)
    assert (header.kind, header.status) == ("span", "failed")
    assert header.error is not None
    assert header.error.message == "ValueError: boom"


def test_an_agent_failure_another_agent_recovered_from_does_not_fail_the_run(runs: Runs) -> None:
    trace, root, outer, tool, inner = new_id(16), new_id(8), new_id(8), new_id(8), new_id(8)
    runs.send(
        span("POST /chat", trace, root, start=0, end=9),
        span("invoke_agent outer", trace, outer, root, start=1, end=8, attributes=AGENT),
        span("execute_tool ask", trace, tool, outer, start=2, end=7,
             attributes={"gen_ai.tool.name": "ask"}, error="sub-agent failed"),
        span("invoke_agent inner", trace, inner, tool, start=3, end=6, attributes=AGENT,
             error="boom"),
    )  # fmt: skip
    run, root_step = runs.tree(trace)
    assert run.status == "completed"
    inner_run = root_step.children[0].children[0].children[0].run
    assert inner_run is not None
    assert inner_run.status == "failed"


@pytest.mark.parametrize(
    ("status_error", "events", "attributes"),
    [
        (None, [("exception", {"exception.type": "asyncio.exceptions.CancelledError"})], {}),
        ("", [("exception", {"exception.type": "KeyboardInterrupt"})], {}),
        (None, [], {"tracehouse.run.status": "cancelled"}),
        ("aborted", [], {"error.type": "AbortError"}),
    ],
    ids=["cancelled-error-no-status", "keyboard-interrupt", "own-attribute", "abort-error"],
)
def test_cancelled_runs_are_cancelled_not_failed(
    runs: Runs, status_error: str | None, events: list[tuple[str, dict[str, Any]]],
    attributes: dict[str, Any],
) -> None:  # fmt: skip
    trace = new_id(16)
    runs.send(
        span("invoke_agent helper", trace, new_id(8), start=0, end=3,
             attributes=AGENT | attributes, error=status_error, events=events),
    )  # fmt: skip
    header = runs.header(trace)
    assert header.status == "cancelled"
    assert header.error is not None


def test_trigger_version_and_session_come_from_the_run_span(runs: Runs) -> None:
    trace = new_id(16)
    runs.send(
        span("nightly", trace, new_id(8), start=0, end=1,
             attributes={"tracehouse.run.trigger": "scheduled", "gen_ai.agent.version": "7",
                         "session.id": "s-1", "tracehouse.step.kind": "workflow"}),
    )  # fmt: skip
    header = runs.header(trace)
    assert (header.name, header.kind, header.trigger, header.version, header.session_id) == (
        "nightly", "workflow", "scheduled", "7", "s-1",
    )  # fmt: skip


def test_agent_totals_are_not_added_to_the_llm_steps_they_repeat(runs: Runs) -> None:
    trace, root, sub = new_id(16), new_id(8), new_id(8)
    repeated = {"gen_ai.usage.input_tokens": 30, "gen_ai.usage.output_tokens": 15}
    sub_totals = {"gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 10}
    runs.send(
        span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT | repeated),
        span("chat", trace, new_id(8), root, start=1, end=2, attributes=chat((10, 5))),
        span("invoke_agent sub", trace, sub, root, start=3, end=8,
             attributes=AGENT | sub_totals),
        span("chat", trace, new_id(8), sub, start=4, end=5, attributes=chat((20, 10))),
    )  # fmt: skip
    run, root_step = runs.tree(trace)
    assert (run.tokens.input, run.tokens.output, run.tokens.total) == (30, 15, 45)
    sub_run = root_step.children[1].run
    assert sub_run is not None
    assert sub_run.tokens.total == 30


def test_a_run_without_llm_steps_reports_its_own_tokens(runs: Runs) -> None:
    trace = new_id(16)
    runs.send(
        span("invoke_agent helper", trace, new_id(8), start=0, end=1,
             attributes=AGENT | {"gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3}),
    )  # fmt: skip
    assert runs.header(trace).tokens.total == 10


def test_costs_come_from_the_price_table_and_unknown_models_cost_nothing(runs: Runs) -> None:
    known, unknown = new_id(16), new_id(16)
    runs.send(
        span("invoke_agent a", known, root := new_id(8), start=0, end=3, attributes=AGENT),
        span("chat", known, new_id(8), root, start=1, end=2, attributes=chat((1000, 500))),
        span("invoke_agent b", unknown, other := new_id(8), start=0, end=3, attributes=AGENT),
        span("chat", unknown, new_id(8), other, start=1, end=2,
             attributes=chat((1000, 500), model="in-house-model-7")),
    )  # fmt: skip
    assert runs.header(known).cost_usd == pytest.approx(1000 * 2.5e-6 + 500 * 10e-6)
    assert runs.header(unknown).cost_usd is None


def test_a_root_linking_into_another_run_is_its_sub_run(runs: Runs) -> None:
    parent_trace, parent_root, tool = new_id(16), new_id(8), new_id(8)
    child_trace, child_root = new_id(16), new_id(8)
    runs.send(
        span("invoke_agent planner", parent_trace, parent_root, start=0, end=9, attributes=AGENT),
        span("execute_tool dispatch", parent_trace, tool, parent_root, start=1, end=8,
             attributes={"gen_ai.tool.name": "dispatch"}),
        span("invoke_agent worker", child_trace, child_root, start=2, end=7, attributes=AGENT,
             links=[(parent_trace, tool)]),
    )  # fmt: skip
    child = runs.header(child_trace)
    assert child.parent_run_id == parent_root.hex()
    assert child.trigger == "subagent"
    assert runs.header(parent_trace).parent_run_id is None


def steps(tree: Step) -> list[Step]:
    found, stack = [], [tree]
    while stack:
        step = stack.pop()
        found.append(step)
        stack.extend(step.children)
    return found


def test_steps_whose_parent_is_missing_hang_under_the_root_flagged(runs: Runs) -> None:
    trace, root, missing = new_id(16), new_id(8), new_id(8)
    runs.send(
        span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT),
        span("chat", trace, lost := new_id(8), missing, start=2, end=3, attributes=chat()),
    )  # fmt: skip
    run, tree = runs.tree(trace)
    assert [(c.step_id, c.orphan, c.parent_step_id) for c in tree.children] == [
        (lost.hex(), True, root.hex())
    ]
    assert run.step_count == 1


def test_a_parent_cycle_is_cut_and_every_span_is_shown_once(runs: Runs) -> None:
    trace, root, a, b = new_id(16), new_id(8), new_id(8), new_id(8)
    runs.send(
        span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT),
        span("a", trace, a, b, start=1, end=2),
        span("b", trace, b, a, start=2, end=3),
        span("self", trace, me := new_id(8), me, start=4, end=5),
    )  # fmt: skip
    _, tree = runs.tree(trace)
    ids = [s.step_id for s in steps(tree)]
    assert sorted(ids) == sorted(x.hex() for x in (root, a, b, me))


def test_a_deep_chain_of_steps_builds_without_recursion_limits(runs: Runs) -> None:
    trace, root = new_id(16), new_id(8)
    chain, parent = [], root
    for depth in range(3000):
        chain.append(span(f"step {depth}", trace, child := new_id(8), parent, start=1, end=2))
        parent = child
    runs.send(span("root", trace, root, start=0, end=3), *chain)
    run, tree = runs.tree(trace)
    assert run.step_count == 3000
    assert tree.descendants == 3000


def test_a_sub_run_is_found_by_its_own_id(runs: Runs) -> None:
    trace, root, sub = new_id(16), new_id(8), new_id(8)
    runs.send(
        span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT),
        span("invoke_agent sub", trace, sub, root, start=1, end=8,
             attributes=AGENT | {"gen_ai.agent.name": "sub"}),
        span("chat", trace, new_id(8), sub, start=2, end=3, attributes=chat()),
    )  # fmt: skip
    found = run_tree(runs.store, "default", sub.hex())
    assert found is not None
    assert (found.run.run_id, found.run.name, found.run.parent_run_id) == (
        sub.hex(), "sub", root.hex(),
    )  # fmt: skip
    assert found.run.step_count == 1
    assert run_tree(runs.store, "default", trace.hex()) is not None
    assert run_tree(runs.store, "other-project", sub.hex()) is None
    assert run_tree(runs.store, "default", new_id(8).hex()) is None


def test_oversized_inputs_are_cut_with_a_marker_and_their_size_kept(db: Client) -> None:
    from builders import LIMITS, request
    from tracehouse.collector.encode import SPAN_ENCODER
    from tracehouse.collector.prepare import Format, Limits, decode_export

    trace = new_id(16)
    big = "x" * 5000
    body = request(
        [
            span(
                "tool",
                trace,
                new_id(8),
                start=0,
                end=1,
                attributes={"gen_ai.tool.name": "t", "gen_ai.tool.call.arguments": big},
            )
        ]
    )
    rows = decode_export(body.SerializeToString(), Format.PROTOBUF, "",
                         Limits(LIMITS.max_decompressed_bytes, 1024), "default")  # fmt: skip
    Runs(db).writer.write(SPAN_ENCODER.encode(rows))
    stored, size = db.query("SELECT Input, InputBytes FROM spans").result_rows[0]
    assert size == 5000
    assert len(stored.encode()) <= 1024
    assert stored.startswith("xxx")
    assert stored.endswith("…[truncated by tracehouse: 5000 bytes in all]")

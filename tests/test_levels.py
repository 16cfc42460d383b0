"""A big run's first level, read alone (levels.py), says what its whole tree says.

A client opening a run asks for `depth=1`; for a big run not yet cached the
query API reads that level from the trace's shape instead of assembling
every step. These tests build trees of every shape — deep, wide, orphans,
steps that are their own parents, cycles, children that started before
their parents, pending and failed steps, LLM calls with tokens and costs,
sub-agents and LangGraph subgraphs — and compare the first level so read
with the same level of the whole tree, as the API shows them.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from builders import Runs, chat, new_id, pending, span
from conftest import RunningServer
from tracehouse.query_api import levels, runs, views
from tracehouse.query_api.runs import RunTree, TreeCache, first_level, read_whole, run_tree

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
KINDS: dict[str, dict[str, Any]] = {
    "llm": chat((120, 30)),
    "tool": {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
    "agent": AGENT,
    # A chain over graph nodes is a LangGraph subgraph: a sub-run.
    "node": {"tracehouse.step.kind": "node"},
    "chain": {"tracehouse.step.kind": "chain"},
    "span": {},
}


def shown(tree: RunTree | None, depth: int = 1) -> dict[str, Any]:
    assert tree is not None
    return {"run": views.run_view(tree.run), "root": views.step_view(tree.root, depth)}


def read_alone(store: Any, run_id: str, trace_id: str) -> bool:
    """Whether the first level of this run is read from its shape (not the whole tree)."""
    shape = store.trace_shape("default", trace_id)
    return levels.first_level(shape, run_id) is not None


# One step: (parent: one of the steps before it, by index, -1 the root, or
# "missing" / "self"), its kind, whether it failed, what of it arrived (its
# span, a pending span only: still running, or both), when it starts after
# its parent.
step = st.tuples(
    st.one_of(st.integers(-1, 60), st.sampled_from(["missing", "self"])),
    st.sampled_from([*KINDS, "llm", "llm", "agent"]),
    st.booleans(),
    st.sampled_from(["ended", "running", "both"]),
    st.integers(-2, 5),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=8, max_size=60), tokens=st.integers(0, 500))
def test_the_first_level_read_alone_is_the_whole_trees(
    db: Client, monkeypatch: pytest.MonkeyPatch, steps: list[tuple[Any, ...]], tokens: int
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 0)
    built = Runs(db)
    trace, root = new_id(16), new_id(8)
    ids = [new_id(8) for _ in steps]
    starts: list[int] = []
    sent = [span("invoke_agent big", trace, root, start=0, end=10_000, attributes=AGENT)]
    for n, (parent, kind, failed, arrived, after) in enumerate(steps):
        if parent == "missing":
            parent_id, parent_start = new_id(8), 0
        elif parent == "self":
            parent_id, parent_start = ids[n], 0
        elif parent < 0 or n == 0:
            parent_id, parent_start = root, 0
        else:
            parent_id, parent_start = ids[parent % n], starts[parent % n]
        starts.append(max(0, parent_start + after))
        attributes = KINDS[kind]
        if kind == "llm":  # what an LLM step passes up: its tokens, model and previews
            attributes = chat((tokens, n), model=f"model-{n % 3}") | {
                "input.value": f"question {n % 4}", "output.value": f"answer {n}"}  # fmt: skip
        made = span(f"{kind} {n}", trace, ids[n], parent_id, start=starts[-1], end=starts[-1] + 7,
                    attributes=attributes, error="boom" if failed else None)  # fmt: skip
        sent += {"ended": [made], "running": [pending(made)], "both": [pending(made), made]}[
            arrived
        ]
    built.send(*sent)

    store = built.store
    if all(isinstance(parent, int) for parent, *_ in steps):  # no orphan, no cycle
        assert read_alone(store, root.hex(), trace.hex())
    whole = run_tree(store, "default", trace.hex())
    for asked in (trace.hex(), root.hex()):
        assert shown(first_level(store, "default", asked)) == shown(whole)
        assert shown(first_level(store, "default", asked), 0) == shown(whole, 0)


def run_of_agents(
    agents: int, chats: int, failed: int | None = None
) -> tuple[bytes, bytes, list[otlp.Span]]:
    """A root agent over sub-agents of LLM steps each (the one numbered `failed` fails):
    its trace, its root and its spans. LLM step s takes 100 + s tokens in and 10 out."""
    trace, root = new_id(16), new_id(8)
    sent = [span("invoke_agent big", trace, root, start=0, end=900, attributes=AGENT)]
    for a in range(agents):
        agent = new_id(8)
        sent.append(span(f"agent {a}", trace, agent, root, start=1 + a, end=800, attributes=AGENT,
                         error="boom" if a == failed else None))  # fmt: skip
        sent += [span(f"chat {a}.{s}", trace, new_id(8), agent, start=10 + s, end=20 + s,
                      attributes=chat((100 + s, 10), model=f"model-{s}")
                      | {"input.value": f"question {s}", "output.value": f"answer {s}"})
                 for s in range(chats)]  # fmt: skip
    return trace, root, sent


def test_a_plain_tree_is_read_alone_and_answers_alike(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 0)
    built = Runs(db)
    trace, root, sent = run_of_agents(agents=4, chats=6, failed=2)
    agent = sent[-1].parent_span_id  # agent 3, whose last LLM step that is
    # Started with agent 3's first LLM step: the lesser input is the first.
    sent.append(span("chat 3.tie", trace, new_id(8), agent, start=10, end=11,
                     attributes=chat((1, 1)) | {"input.value": "a question"}))  # fmt: skip
    graph = new_id(8)
    sent.append(span("graph", trace, graph, root, start=50, end=90, attributes=KINDS["chain"]))
    sent += [span(f"node {n}", trace, new_id(8), graph, start=51 + n, end=60,
                  attributes=KINDS["node"]) for n in range(2)]  # fmt: skip
    # Agent 0's steps were announced by pending spans before they ended, and
    # agent 1 has one more LLM step still running: each step counts once.
    chats = [s for s in sent if s.name.startswith("chat 0.")]
    sent += [pending(s) for s in chats]
    agent_1 = next(s for s in sent if s.name == "agent 1")
    running = span("chat 1.running", trace, new_id(8), agent_1.span_id, start=30, end=31,
                   attributes=chat((50, 50)))  # fmt: skip
    sent.append(pending(running))
    built.send(*sent)

    assert read_alone(built.store, root.hex(), trace.hex())
    answer = shown(first_level(built.store, "default", root.hex()))
    assert answer == shown(run_tree(built.store, "default", root.hex()))
    agents = answer["root"]["children"][:4]
    assert [a["child_count"] for a in agents] == [6, 7, 6, 7]
    assert [a["children"] for a in agents] == [None] * 4
    assert agents[0]["tokens"] == {"input": 615, "output": 60, "total": 675}
    # An agent's previews are its first LLM step's input and its last one's output.
    assert (agents[0]["input_preview"], agents[0]["output_preview"]) == ("question 0", "answer 5")
    assert agents[0]["model"] == "model-5"
    assert agents[3]["input_preview"] == "a question"
    assert agents[2]["status"] == "failed"
    assert agents[2]["step_count"] == 6
    subgraph = answer["root"]["children"][-1]
    assert (subgraph["run_id"], subgraph["kind"], subgraph["step_count"]) == (
        graph.hex(),
        "workflow",
        2,
    )
    assert answer["run"]["step_count"] == 33


def test_a_first_level_read_alone_is_kept_and_its_whole_tree_read_after(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 0)
    built = Runs(db)
    trace, root, agent = new_id(16), new_id(8), new_id(8)
    built.send(
        span("invoke_agent big", trace, root, start=0, end=90, attributes=AGENT),
        span("agent", trace, agent, root, start=1, end=80, attributes=AGENT),
        span("chat", trace, new_id(8), agent, start=2, end=3, attributes=chat((5, 5))),
    )
    store, cache = built.store, TreeCache(1_000)
    alone = first_level(store, "default", root.hex(), cache)
    assert alone is not None
    assert first_level(store, "default", root.hex(), cache) is alone  # kept
    version = store.trace_version("default", trace.hex())
    assert cache.get("default", trace.hex(), version) is None

    with cache.reading_ahead("default", trace.hex()) as first:  # a request already reading
        assert first
        read_whole(store, "default", alone, cache)
        assert cache.get("default", trace.hex(), version) is None
    read_whole(store, "default", alone, cache)

    whole = cache.get("default", trace.hex(), version)
    assert whole is not None
    assert shown(whole) == shown(alone)
    assert [len(s.children) for s in whole.root.children] == [1]
    assert first_level(store, "default", root.hex(), cache) is whole


def test_shapes_it_cannot_read_alone_are_assembled_whole(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 0)
    built = Runs(db)
    trace, root, a, b, c = new_id(16), *(new_id(8) for _ in range(4))
    # A cycle of two (a and b each other's parent), and c under it.
    built.send(
        span("invoke_agent big", trace, root, start=0, end=90, attributes=AGENT),
        span("a", trace, a, b, start=1, end=5),
        span("b", trace, b, a, start=2, end=5),
        span("c", trace, c, b, start=3, end=5),
    )
    assert not read_alone(built.store, root.hex(), trace.hex())
    assert shown(first_level(built.store, "default", root.hex())) == shown(
        run_tree(built.store, "default", root.hex())
    )
    # A child that started before the orphan it is under.
    trace, root, orphan, early = new_id(16), *(new_id(8) for _ in range(3))
    built.send(
        span("invoke_agent big", trace, root, start=0, end=90, attributes=AGENT),
        span("orphan", trace, orphan, new_id(8), start=5, end=9),
        span("early", trace, early, orphan, start=4, end=9),
    )
    assert not read_alone(built.store, root.hex(), trace.hex())
    answer = shown(first_level(built.store, "default", root.hex()))
    assert answer == shown(run_tree(built.store, "default", root.hex()))
    assert [s["name"] for s in answer["root"]["children"]] == ["early", "orphan"]


def test_a_root_not_arrived_whose_span_has_a_parent_is_no_ones_child(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 0)
    built = Runs(db)
    trace, graph, node, early = new_id(16), new_id(8), new_id(8), new_id(8)
    # No root span yet: the run is named after the earliest span's parent, the
    # node, whose own parent (a chain) is stored and whose child started first.
    built.send(
        span("graph", trace, graph, new_id(8), start=20, end=70, attributes=KINDS["chain"]),
        span("plan", trace, node, graph, start=15, end=25, attributes=KINDS["node"]),
        span("early", trace, early, node, start=5, end=15),
        span("search", trace, new_id(8), graph, start=30, end=31, attributes=KINDS["tool"]),
    )
    assert built.tree(trace).run.run_id == node.hex()
    assert read_alone(built.store, node.hex(), trace.hex())
    answer = shown(first_level(built.store, "default", node.hex()))
    assert answer == shown(run_tree(built.store, "default", node.hex()))
    chain = next(s for s in answer["root"]["children"] if s["name"] == "graph")
    assert (chain["child_count"], chain["kind"], chain["run_id"]) == (1, "chain", None)


def test_token_sums_stay_exact_past_what_a_float_holds() -> None:
    # The collector keeps up to 10**12 tokens a field; 10,001 such LLM steps
    # under one agent sum past 2**53, where float sums lose units.
    dtype = [("id", "u8"), ("parent", "u8"), ("flags", "u1"), ("start", "i8"), ("end", "i8"),
             ("input_tokens", "u8"), ("output_tokens", "u8"), ("total_tokens", "u8"),
             ("cost", "f8")]  # fmt: skip
    many = 10_001
    shape = np.zeros(many + 2, dtype=dtype)
    shape["id"] = np.arange(1, many + 3)
    shape["parent"][1] = 1  # the agent, under the root (id 1)
    shape["parent"][2:] = 2
    shape["flags"][2:] = 1 << levels.FLAGS.index("llm")
    shape["start"] = np.arange(many + 2)
    shape["end"] = shape["start"] + 1
    tokens = 10**12 - 1
    shape["input_tokens"][2:] = tokens

    level = levels.first_level(shape, levels.span_hex(1))

    assert level is not None
    assert [top.tokens.input for top in level.tops] == [many * tokens]


def test_the_api_answers_a_big_runs_first_level_alone_then_from_its_tree(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, db: Client
) -> None:
    monkeypatch.setattr(runs, "LEVELS_FROM", 100)
    built = Runs(db)
    trace, root, sent = run_of_agents(agents=10, chats=12)
    built.send(*sent)
    assert read_alone(built.store, root.hex(), trace.hex())

    with httpx.Client(base_url=server.api_base) as client:
        path = f"/api/v1/runs/{root.hex()}/tree"
        alone = client.get(path, params={"depth": "1"}).json()
        whole = client.get(path).json()  # assembled, and cached
        cached = client.get(path, params={"depth": "1"}).json()
    assert alone == cached
    assert [s["child_count"] for s in alone["root"]["children"]] == [12] * 10
    assert [s["children"] for s in alone["root"]["children"]] == [None] * 10
    assert [len(s["children"]) for s in whole["root"]["children"]] == [12] * 10
    assert alone["run"]["step_count"] == 130
    assert alone["run"]["tokens"] == {"input": 12_660, "output": 1_200, "total": 13_860}

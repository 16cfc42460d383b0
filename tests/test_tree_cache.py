"""Cached trees: served while nothing of their trace has arrived, rebuilt once anything does.

The query API keeps assembled trees and checks, on each request, only its
trace's version (two counts and the newest arrival). These tests change a
trace in every way that must show — a new step, a root arriving for a
running run, a pending span ending, a retried export, time passing for a
run that went quiet — and compare the cached answer with one assembled
from nothing.
"""

from __future__ import annotations

import time

from clickhouse_connect.driver.client import Client

from builders import Runs, new_id, pending, span
from tracehouse.query_api.assembly import RunHeader
from tracehouse.query_api.runs import RunTree, TreeCache, run_tree, trace_tree
from tracehouse.query_api.store import Store

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m",
        "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4}  # fmt: skip


Shown = tuple[RunHeader, list[tuple[str, str, int]]]


def shown(tree: RunTree | None) -> Shown:
    """What an answer says: the header and every step's name and status, in order."""
    assert tree is not None
    steps, stack = [], [tree.root]
    while stack:
        step = stack.pop()
        steps.append((step.row.name, step.row.status, step.descendants))
        stack.extend(reversed(step.children))
    return tree.run, steps


def test_a_cached_tree_changes_with_every_arrival(db: Client) -> None:
    runs = Runs(db)
    cache = TreeCache(10_000)
    trace, root, tool = new_id(16), new_id(8), new_id(8)

    def cached() -> Shown:
        answer = shown(trace_tree(runs.store, "default", trace.hex(), cache=cache))
        assert answer == shown(trace_tree(runs.store, "default", trace.hex())), "cache is stale"
        return answer

    runs.send(span("chat", trace, new_id(8), root, start=1, end=2, attributes=CHAT))
    running = cached()
    assert running[0].status == "running"
    first = trace_tree(runs.store, "default", trace.hex(), cache=cache)
    assert trace_tree(runs.store, "default", trace.hex(), cache=cache) is first  # from the cache

    runs.send(pending(span("execute_tool search", trace, tool, root, start=3,
                           attributes={"gen_ai.tool.name": "search"})))  # fmt: skip
    started = cached()
    assert started[1][-1] == ("search", "running", 0)
    runs.send(span("execute_tool search", trace, tool, root, start=3, end=4,
                   attributes={"gen_ai.tool.name": "search"}))  # fmt: skip
    assert cached()[1][-1] == ("search", "completed", 0)

    runs.send(span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT))
    done = cached()
    header = done[0]
    assert (header.status, header.step_count, header.tokens.input) == ("completed", 2, 3)

    # A retried export changes nothing a user sees, cached or not.
    runs.send(span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT))
    assert cached() == done


def test_a_cached_running_run_turns_stale(db: Client) -> None:
    runs = Runs(db)
    store = Store(db, stale_after_s=1)
    cache = TreeCache(10_000)
    trace, root = new_id(16), new_id(8)
    runs.send(span("chat", trace, new_id(8), root, start=1, end=2, attributes=CHAT))

    assert not trace_tree(store, "default", trace.hex(), cache=cache).run.stale  # type: ignore[union-attr]
    time.sleep(1.2)
    assert trace_tree(store, "default", trace.hex(), cache=cache).run.stale  # type: ignore[union-attr]


def test_a_run_looked_for_before_it_arrived_is_found_after(db: Client) -> None:
    runs = Runs(db)
    cache = TreeCache(10_000)
    trace, root = new_id(16), new_id(8)
    assert run_tree(runs.store, "default", root.hex(), cache) is None
    assert run_tree(runs.store, "default", trace.hex(), cache) is None

    runs.send(span("invoke_agent helper", trace, root, start=0, end=9, attributes=AGENT))

    by_run = run_tree(runs.store, "default", root.hex(), cache)
    by_trace = run_tree(runs.store, "default", trace.hex(), cache)
    assert by_run is not None
    assert by_trace is not None
    assert by_run.run == by_trace.run
    assert by_run.run.name == "helper"
    assert run_tree(runs.store, "other", root.hex(), cache) is None  # found in its own project only

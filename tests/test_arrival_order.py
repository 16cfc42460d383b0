"""Any order, any batching, any duplicates: the same headers and the same tree.

Property tests over real framework captures: a run's spans are shuffled,
split into batches (each its own insert, as separate exports through
separate collectors would be), some sent twice, and the run read back must
equal the run stored from one clean export. Between batches, everything
that has arrived is in the tree exactly once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from builders import block_of, new_id
from conftest import FIXTURES
from tracehouse.collector.writer import span_writer
from tracehouse.query_api.assembly import RunHeader, Step
from tracehouse.query_api.runs import trace_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import migrate

CAPTURES = ("pydantic_ai/nested", "langgraph/nested", "traceloop/nested", "vercel_ai/failed")


def captured_spans(name: str) -> list[otlp.Span]:
    request = otlp_trace.ExportTraceServiceRequest.FromString(
        (FIXTURES / f"{name}.pb").read_bytes()
    )
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def with_trace(spans: list[otlp.Span], trace_id: bytes) -> list[otlp.Span]:
    copies = []
    for original in spans:
        copy = otlp.Span()
        copy.CopyFrom(original)
        copy.trace_id = trace_id
        copies.append(copy)
    return copies


class Store_:
    def __init__(self, client: Client) -> None:
        migrate(client, SINGLE_NODE, 0)
        self.writer = span_writer(client)
        self.store = Store(client)

    def send(self, spans: list[otlp.Span]) -> None:
        self.writer.write(block_of(spans))

    def read(self, trace_id: bytes) -> tuple[RunHeader, Step]:
        found = trace_tree(self.store, "default", trace_id.hex())
        assert found is not None
        return found.run, found.root


_databases = itertools.count()


@pytest.fixture(scope="module")
def stored(chdb_dir: Path) -> Iterator[Store_]:
    client = open_client(f"chdb://{chdb_dir}?database=arrival_{next(_databases)}")
    yield Store_(client)
    client.close()


def shape(step: Step) -> Any:
    """Everything a reader sees of a tree, without the trace id and export positions.

    Steps that started at the same instant are ordered by their place in the
    export (the order the SDK ended them), which a shuffle changes; so
    siblings are compared in (start, id) order.
    """
    run = replace(step.run, trace_id="") if step.run else None
    row = step.row._replace(export_index=0)
    children = sorted(step.children, key=lambda c: (c.row.start_ns, c.step_id))
    return (row, step.orphan, step.parent_step_id, run, [shape(c) for c in children])


def ids_in(step: Step) -> list[str]:
    found, stack = [], [step]
    while stack:
        current = stack.pop()
        found.append(current.step_id)
        stack.extend(current.children)
    return found


@st.composite
def deliveries(draw: st.DrawFn, count: int) -> list[list[int]]:
    """A shuffled, batched, partly duplicated delivery of span indices 0..count-1."""
    order = draw(st.permutations(range(count)))
    cuts = sorted(draw(st.sets(st.integers(1, count - 1), max_size=min(6, count - 1))))
    batches = [list(order[a:b]) for a, b in itertools.pairwise([0, *cuts, count])]
    for _ in range(draw(st.integers(0, 4))):
        batch = draw(st.integers(0, len(batches) - 1))
        batches[batch].append(draw(st.integers(0, count - 1)))
    return batches


@pytest.mark.parametrize("capture", CAPTURES)
def test_arrival_order_batching_and_duplicates_do_not_change_the_run(
    stored: Store_, capture: str
) -> None:
    spans = captured_spans(capture)
    reference_trace = new_id(16)
    stored.send(with_trace(spans, reference_trace))
    reference_run, reference_tree = stored.read(reference_trace)
    expected = shape(reference_tree)

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(deliveries(len(spans)))
    def check(batches: list[list[int]]) -> None:
        trace = new_id(16)
        copies = with_trace(spans, trace)
        arrived: set[str] = set()
        for batch in batches:
            stored.send([copies[i] for i in batch])
            arrived |= {copies[i].span_id.hex() for i in batch}
            run, tree = stored.read(trace)
            shown = ids_in(tree)
            # Nothing that arrived is missing or shown twice; only the root may
            # stand in for a span that has not come yet.
            assert len(shown) == len(set(shown))
            assert arrived <= set(shown) <= arrived | {run.run_id}
            # Until the root comes the run goes by the id its steps name as
            # their parent: the root's, or an ancestor's that is also missing.
            assert run.run_id == reference_run.run_id or run.run_id not in arrived
        run, tree = stored.read(trace)
        assert replace(run, trace_id="") == replace(reference_run, trace_id="")
        assert shape(tree) == expected

    check()

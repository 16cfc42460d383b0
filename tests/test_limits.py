"""Limits on what one span or request may hold, and the visible marks left when one is hit.

Hostile or broken senders: too many spans in a request, spans with
thousands of attributes, events or links, huge values, clocks that run
backwards, stopped at 1970 or far ahead. Each is answered clearly or
stored with a `warnings` mark the step shows; none crashes or hangs the
server. Sent as real OTLP over HTTP and gRPC; read back over the query API.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from builders import BASE_NS, new_id, request, span
from conftest import RunningServer, server_settings
from tracehouse.query_api.store import QueryTimeout, Store
from tracehouse.schema.clickhouse import open_client

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "limits"}


@pytest.fixture(scope="module")
def limited(chdb_dir: Path) -> Iterator[RunningServer]:
    dsn = f"chdb://{chdb_dir}?database=limits"
    settings = server_settings(
        dsn, max_spans_per_request=100, max_attributes=50, max_events=20, max_links=5,
        max_value_bytes=4096,
    )  # fmt: skip
    running = RunningServer(settings).start()
    yield running
    running.stop()


def send(server: RunningServer, spans: list[otlp.Span]) -> httpx.Response:
    return httpx.post(
        f"{server.http_base}/v1/traces",
        content=request(spans).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )


def step_of(server: RunningServer, run_id: str, step_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.api_base}/api/v1/runs/{run_id}/steps/{step_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_too_many_spans_in_one_request_is_refused_whole(limited: RunningServer) -> None:
    trace, root = new_id(16), new_id(8)
    spans = [span(f"s{i}", trace, new_id(8), root) for i in range(101)]
    answer = send(limited, spans)
    assert answer.status_code == 413
    with grpc.insecure_channel(limited.grpc_endpoint) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as refused:
            export(request(spans).SerializeToString(), timeout=10)
    # Not retryable: resending the same request cannot succeed.
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "101 spans" in (refused.value.details() or "")
    assert send(limited, spans[:100]).status_code == 200


def test_attributes_events_and_links_over_the_limits_are_dropped_and_marked(
    limited: RunningServer,
) -> None:
    trace, root, busy = new_id(16), new_id(8), new_id(8)
    crowded = span(
        "crowded", trace, busy, root, start=1, end=2,
        attributes={f"k{i:04}": i for i in range(80)},
        events=[(f"e{i}", {}) for i in range(30)],
        links=[(new_id(16), new_id(8)) for _ in range(9)],
    )  # fmt: skip
    crowded.dropped_attributes_count = 3  # the sender's own drops are kept, and added to
    assert send(limited, [span("root", trace, root, end=9, attributes=AGENT), crowded]).is_success

    detail = step_of(limited, root.hex(), busy.hex())
    assert len(detail["attributes"]) == 50
    assert len(detail["events"]) == 20
    assert len(detail["links"]) == 5
    assert sorted(detail["warnings"]) == ["attributes_dropped", "events_dropped", "links_dropped"]
    tree = httpx.get(f"{limited.api_base}/api/v1/runs/{root.hex()}/tree").json()
    assert tree["root"]["children"][0]["warnings"] == detail["warnings"]


def test_a_huge_value_is_cut_with_a_marker_and_its_input_keeps_its_size(
    limited: RunningServer,
) -> None:
    trace, root, tool = new_id(16), new_id(8), new_id(8)
    big = "x" * 10_000
    sent = span(
        "execute_tool fetch", trace, tool, root, start=1, end=2,
        attributes={"gen_ai.tool.name": "fetch", "gen_ai.tool.call.arguments": big,
                    "note": big},
    )  # fmt: skip
    assert send(limited, [span("root", trace, root, end=9, attributes=AGENT), sent]).is_success
    detail = step_of(limited, root.hex(), tool.hex())
    assert detail["warnings"] == ["attribute_cut"]
    note = detail["attributes"]["note"]
    assert note.startswith("x" * 4096)
    assert note.endswith("…[cut by tracehouse: 10000 characters in all]")
    assert detail["args_bytes"] == 10_000


@pytest.mark.parametrize(
    ("start_ns", "end_ns", "warning"),
    [
        (BASE_NS + 5_000_000, BASE_NS, "end_before_start"),
        (0, 1_000, "no_start_time"),
        # Year 2200: in ClickHouse's range, far ahead of the server's clock.
        (7_258_118_400 * 1_000_000_000, 7_258_118_400 * 1_000_000_000 + 1, "clock_ahead"),
    ],
    ids=["end-before-start", "1970", "2200"],
)
def test_skewed_clocks_are_stored_and_marked(
    limited: RunningServer, start_ns: int, end_ns: int, warning: str
) -> None:
    trace, root = new_id(16), new_id(8)
    skewed = otlp.Span(
        trace_id=trace, span_id=root, name="skewed",
        start_time_unix_nano=start_ns, end_time_unix_nano=end_ns,
    )  # fmt: skip
    assert send(limited, [skewed]).status_code == 200
    header = httpx.get(f"{limited.api_base}/api/v1/runs/{trace.hex()}").json()
    assert header["status"] == "completed"
    assert header["duration_ms"] >= 0
    detail = step_of(limited, root.hex(), root.hex())
    assert detail["warnings"] == [warning]


def test_a_span_that_is_its_own_parent_is_shown_once_not_looped(limited: RunningServer) -> None:
    trace, root, selfish = new_id(16), new_id(8), new_id(8)
    started = time.monotonic()
    assert send(
        limited,
        [span("root", trace, root, end=9, attributes=AGENT),
         span("selfish", trace, selfish, selfish, start=1, end=2)],
    ).is_success  # fmt: skip
    tree = httpx.get(f"{limited.api_base}/api/v1/runs/{root.hex()}/tree", timeout=10).json()
    [child] = tree["root"]["children"]
    assert (child["step_id"], child["orphan"], child["children"]) == (selfish.hex(), True, [])
    assert time.monotonic() - started < 10


def test_limits_leave_well_formed_exports_untouched(limited: RunningServer) -> None:
    trace, root = new_id(16), new_id(8)
    normal = span("root", trace, root, end=9, attributes=AGENT | {"k": "v" * 100})
    response = otlp_trace.ExportTraceServiceResponse.FromString(send(limited, [normal]).content)
    assert not response.HasField("partial_success")
    assert step_of(limited, root.hex(), root.hex())["warnings"] == []


@pytest.fixture
def impatient(dsn: str) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(dsn, request_timeout_s=1.0)).start()
    yield running
    running.stop()


def test_a_body_that_trickles_in_is_cut_off_at_the_timeout(impatient: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", impatient.ports.http), timeout=10) as client:
        client.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 1000\r\n\r\n0123"
        )
        started = time.monotonic()
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 5
    assert httpx.get(f"{impatient.http_base}/healthz").status_code == 200


def test_a_read_past_the_timeout_is_stopped_by_clickhouse(dsn: str) -> None:
    # The query API's read client carries max_execution_time (serve.py); a
    # read that runs past it is stopped and answered 504 query_timeout.
    client = open_client(dsn, {"max_execution_time": 1})
    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        Store(client)._rows(
            "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1", {}
        )
    assert time.monotonic() - started < 5
    client.close()

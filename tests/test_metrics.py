"""The service's own health, as an operator sees it: Prometheus metrics, CORS, timeouts.

Metrics are process-wide and this process runs many servers, so each test
reads them before and after and checks what moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from builders import new_id, request, span
from conftest import RunningServer, server_settings


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(
    before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    after: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    name: str,
    **labels: str,
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def post(server: RunningServer, body: bytes, path: str = "/v1/traces") -> httpx.Response:
    return httpx.post(
        f"{server.http_base}{path}",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
    )


def test_exports_items_and_writes_are_counted(server: RunningServer) -> None:
    before = metrics(server.api_base)
    trace = new_id(16)
    spans = [span("a", trace, new_id(8)), span("b", trace, new_id(8))]
    bad_id = span("c", trace, new_id(8))
    bad_id.span_id = b"\x01\x02"
    assert post(server, request([*spans, bad_id]).SerializeToString()).status_code == 200
    assert post(server, request(spans).SerializeToString()).status_code == 200
    assert post(server, b"\xff\xff not protobuf").status_code == 400
    after = metrics(server.api_base)

    assert moved(before, after, "tracehouse_exports_total", signal="traces", outcome="ok") == 1
    assert moved(before, after, "tracehouse_exports_total", signal="traces", outcome="partial") == 1
    assert moved(before, after, "tracehouse_exports_total", signal="traces", outcome="invalid") == 1
    assert moved(before, after, "tracehouse_items_total", signal="traces", outcome="accepted") == 4
    assert moved(before, after, "tracehouse_items_total", signal="traces", outcome="rejected") == 1
    assert moved(before, after, "tracehouse_batch_rows_sum", table="spans") == 4
    assert moved(before, after, "tracehouse_write_seconds_count", table="spans") >= 1
    assert ("tracehouse_queued_items", (("signal", "traces"),)) in after
    # The OTLP port serves the same metrics, for a collector running alone.
    assert (
        metrics(server.http_base)[
            ("tracehouse_exports_total", (("outcome", "ok"), ("signal", "traces")))
        ]
        >= 1
    )


def test_open_websockets_are_counted(server: RunningServer) -> None:
    async def watch() -> tuple[float, float]:
        before = metrics(server.api_base)
        url = server.api_base.replace("http://", "ws://") + "/api/v1/live"
        async with websockets.connect(url):
            await asyncio.sleep(0.2)
            during = metrics(server.api_base)
        return (
            moved(before, during, "tracehouse_websocket_clients", kind="list"),
            during[("tracehouse_websocket_clients", (("kind", "list"),))],
        )

    change, _ = asyncio.run(watch())
    assert change == 1


@pytest.fixture
def cors_server(dsn: str) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(dsn, cors_origins="https://dash.example")).start()
    yield running
    running.stop()


def test_cors_is_closed_by_default(server: RunningServer) -> None:
    answer = httpx.get(f"{server.api_base}/api/v1/runs", headers={"Origin": "https://dash.example"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_cors_answers_the_configured_origins_only(cors_server: RunningServer) -> None:
    url = f"{cors_server.api_base}/api/v1/runs"
    allowed = httpx.get(url, headers={"Origin": "https://dash.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://dash.example"
    other = httpx.get(url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = httpx.options(
        url,
        headers={
            "Origin": "https://dash.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

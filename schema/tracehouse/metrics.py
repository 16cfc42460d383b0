"""The service's own metrics, for Prometheus (`GET /metrics` on the API and OTLP/HTTP ports).

Process-wide, like the process they describe: one set of metrics however
many listeners a process runs.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate
from starlette.requests import Request
from starlette.responses import Response

EXPORTS = Counter(
    "tracehouse_exports",
    "OTLP export requests by signal and outcome (ok, partial, invalid, too_large, "
    "unsupported, unauthorized, forbidden, overloaded, write_failed)",
    ["signal", "outcome"],
)
ITEMS = Counter(
    "tracehouse_items",
    "Spans or log records received, by signal and outcome (accepted, rejected)",
    ["signal", "outcome"],
)
BATCH_ROWS = Histogram(
    "tracehouse_batch_rows",
    "Rows per ClickHouse insert",
    ["table"],
    buckets=(1, 10, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000),
)
WRITE_SECONDS = Histogram(
    "tracehouse_write_seconds",
    "Time of one ClickHouse insert",
    ["table"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUED = Gauge(
    "tracehouse_queued_items", "Items accepted and not yet written, by signal", ["signal"]
)
WEBSOCKETS = Gauge("tracehouse_websocket_clients", "Open WebSockets, by kind (run, list)", ["kind"])
WEBSOCKETS_DROPPED = Counter(
    "tracehouse_websocket_dropped", "WebSocket clients closed for falling behind"
)


async def metrics_endpoint(request: Request) -> Response:
    return Response(_generate(REGISTRY), media_type=CONTENT_TYPE_LATEST)

"""A retried export (the same spans sent again) leaves every span stored once."""

from __future__ import annotations

import httpx
from clickhouse_connect.driver.client import Client
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from conftest import RunningServer, read_spans
from test_ingest import SPEC_EXAMPLE, record_spans


def count(db: Client, sql: str = "SELECT count() FROM spans FINAL") -> int:
    return int(db.query(sql).result_rows[0][0])


def test_the_same_export_sent_three_times_is_stored_once(server: RunningServer, db: Client) -> None:
    spans = record_spans()
    grpc_exporter: SpanExporter = GrpcExporter(endpoint=server.grpc_endpoint, insecure=True)
    http_exporter: SpanExporter = HttpExporter(endpoint=f"{server.http_base}/v1/traces")
    for _ in range(3):
        assert grpc_exporter.export(spans) is SpanExportResult.SUCCESS
        assert http_exporter.export(spans) is SpanExportResult.SUCCESS
        response = httpx.post(
            f"{server.http_base}/v1/traces",
            content=SPEC_EXAMPLE,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200
    grpc_exporter.shutdown()
    http_exporter.shutdown()

    assert count(db) == len(spans) + 1
    assert sorted(read_spans(db)) == sorted(
        [f"{s.context.span_id:016x}" for s in spans if s.context] + ["eee19b7ec3c1b174"]
    )
    # Any reader that lets ClickHouse apply FINAL (the query API does) sees
    # each span once, before and after background merges.
    assert count(db, "SELECT count() FROM spans SETTINGS final = 1") == len(spans) + 1
    db.command("OPTIMIZE TABLE spans FINAL")
    assert count(db, "SELECT count() FROM spans") == len(spans) + 1

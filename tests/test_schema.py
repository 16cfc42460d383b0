"""The schema: versioned, idempotent migrations, retention as TTL, cluster DDL from one source."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.client import Client

from tracehouse.schema.ddl import SINGLE_NODE, SPANS, Layout, create_table
from tracehouse.schema.migrations import MIGRATIONS, applied_versions, migrate
from tracehouse.schema.rows import SPAN_COLUMNS


def engine_of(db: Client, table: str) -> str:
    rows = db.query(
        "SELECT engine_full FROM system.tables"
        " WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    return str(rows[0][0])


def test_migrations_apply_once_and_are_recorded(db: Client) -> None:
    assert migrate(db, SINGLE_NODE, 30) == [m.version for m in MIGRATIONS]
    assert migrate(db, SINGLE_NODE, 30) == []
    assert applied_versions(db) == {m.version for m in MIGRATIONS}
    recorded = db.query("SELECT count() FROM tracehouse_migrations FINAL").result_rows[0][0]
    assert recorded == len(MIGRATIONS)


def test_spans_table_has_every_contract_column(db: Client) -> None:
    migrate(db, SINGLE_NODE, 30)
    described = {row[0]: row[1] for row in db.query("DESCRIBE TABLE spans").result_rows}
    assert described == {c.name: c.type for c in SPAN_COLUMNS}


@pytest.mark.parametrize(("first", "then"), [(30, 7), (30, 0), (0, 14)])
def test_retention_follows_the_setting(db: Client, first: int, then: int) -> None:
    migrate(db, SINGLE_NODE, first)
    migrate(db, SINGLE_NODE, then)
    engine = engine_of(db, "spans")
    if then:
        assert f"TTL toDateTime(IngestedAt) + toIntervalDay({then})" in engine
    else:
        assert "TTL" not in engine


def test_cluster_ddl_comes_from_the_same_source_and_parses(db: Client) -> None:
    statements = create_table(SPANS, Layout(cluster="tracehouse"), 30)
    assert len(statements) == 2
    local, distributed = statements
    assert "CREATE TABLE IF NOT EXISTS `spans_local` ON CLUSTER `tracehouse`" in local
    assert "ENGINE = ReplicatedReplacingMergeTree" in local
    assert "Distributed(`tracehouse`, currentDatabase(), `spans_local`, cityHash64(TraceId))" in (
        distributed
    )
    for statement in statements:
        # formatQuery parses without executing: the engine accepts the syntax.
        formatted = db.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        assert formatted.result_rows[0][0].startswith("CREATE TABLE IF NOT EXISTS")


def test_cluster_without_distributed_creates_replicated_tables_only() -> None:
    statements = create_table(SPANS, Layout(cluster="c", distributed=False), 0)
    assert len(statements) == 1
    assert "`spans` ON CLUSTER `c`" in statements[0]
    assert "TTL" not in statements[0]

"""The schema: versioned, idempotent migrations, retention as TTL, cluster DDL from one source."""

from __future__ import annotations

from dataclasses import replace

import pytest
from clickhouse_connect.driver.client import Client

from builders import Runs, new_id, pending, rows_of, span
from tracehouse.schema.ddl import (
    RUNS,
    RUNS_VIEW_SELECT,
    SINGLE_NODE,
    SPANS,
    Layout,
    create_table,
    create_view,
)
from tracehouse.schema.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE,
    applied_versions,
    heal_runs,
    migrate,
)
from tracehouse.schema.rows import SPAN_COLUMNS, WRITTEN_SPAN_COLUMNS

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}


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


def test_a_database_from_before_pending_spans_upgrades_keeping_its_runs(db: Client) -> None:
    # The spans table as an earlier version made it: no `Pending`, the old sorting key.
    before = replace(
        SPANS,
        columns=tuple(c for c in SPAN_COLUMNS if c.name != "Pending"),
        order_by="(ProjectId, TraceId, SpanId)",
    )
    for statement in create_table(before, SINGLE_NODE, 30):
        db.command(statement)
    for statement in create_table(MIGRATIONS_TABLE, SINGLE_NODE, 0):
        db.command(statement)
    db.insert("tracehouse_migrations", [[1, "spans table"]], column_names=["version", "name"])
    trace, root = new_id(16), new_id(8)
    old_row = rows_of([span("invoke_agent helper", trace, root, end=5, attributes=AGENT)])
    old_columns = [n for n in WRITTEN_SPAN_COLUMNS if n != "Pending"]
    old_data = [
        c for n, c in zip(WRITTEN_SPAN_COLUMNS, old_row.columns, strict=True) if n != "Pending"
    ]
    db.insert("spans", old_data, column_names=old_columns, column_oriented=True)

    assert migrate(db, SINGLE_NODE, 30) == [2, 3, 4, 5, 6, 7, 8]

    assert "ORDER BY (ProjectId, TraceId, SpanId, Pending)" in engine_of(db, "spans")
    assert "min_bytes_for_wide_part = 268435456, merge_selector_base = 10" in engine_of(db, "spans")
    runs = Runs(db)
    assert (runs.header(trace).run_id, runs.header(trace).status) == (root.hex(), "completed")
    # Pending spans work on the upgraded table, and the span already there wins.
    runs.send(pending(span("invoke_agent helper", trace, root, end=5, attributes=AGENT)))
    assert (runs.header(trace).status, runs.header(trace).step_count) == ("completed", 0)


def test_inserted_spans_are_written_as_compact_parts(db: Client) -> None:
    # A wide part is ~150 files for spans: too many to create per insert.
    migrate(db, SINGLE_NODE, 30)
    runs = Runs(db)
    runs.send(*(span("chat", new_id(16), new_id(8), end=5) for _ in range(50)))
    db.command("ALTER TABLE spans MODIFY SETTING min_bytes_for_wide_part = 1")
    runs.send(span("chat", new_id(16), new_id(8), end=5))
    types = db.query(
        "SELECT part_type, count() FROM system.parts WHERE database = currentDatabase()"
        " AND table IN ('spans', 'logs') AND active GROUP BY part_type ORDER BY part_type"
    ).result_rows
    assert types == [("Compact", 1), ("Wide", 1)]


def test_spans_a_crash_left_without_their_run_are_folded_in_at_start(db: Client) -> None:
    migrate(db, SINGLE_NODE, 30)
    heal_runs(db, SINGLE_NODE)  # on an empty database: nothing to do, no error
    runs = Runs(db)
    before, lost = new_id(16), new_id(16)
    runs.send(span("invoke_agent helper", before, new_id(8), end=5, attributes=AGENT))
    # A kill -9 between the spans' part and the view's part: spans, no run.
    db.command("DROP VIEW runs_mv")
    runs.send(span("invoke_agent helper", lost, new_id(8), end=5, attributes=AGENT))
    db.command(create_view("runs_mv", RUNS, SPANS, RUNS_VIEW_SELECT, SINGLE_NODE))
    assert runs.store.top_runs("default", [lost.hex()]) == {}

    heal_runs(db, SINGLE_NODE)

    assert runs.header(lost).status == "completed"
    assert runs.header(before).step_count == 0  # folded again, counted once

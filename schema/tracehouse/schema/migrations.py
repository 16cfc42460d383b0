"""Versioned, idempotent migrations, applied at start and by `tracehouse migrate`.

Each migration is a list of statements rendered from the DDL source for the
layout in force. Every statement is idempotent (`IF NOT EXISTS`), so two
processes starting at once against one server both succeed; the applied
versions are recorded in `tracehouse_migrations`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from tracehouse.schema.ddl import (
    INGEST_SETTINGS,
    LOGS,
    PATCH_SETTINGS,
    RUN_LIST,
    RUNS,
    RUNS_VIEW_SELECT,
    SPANS,
    Layout,
    Table,
    add_columns,
    add_indexes,
    create_table,
    create_view,
    materialize_index,
    modify_settings,
    modify_ttl,
    quote_identifier,
    ttl_sql,
)
from tracehouse.schema.rows import Column

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Layout, int], list[str]]


def _runs(layout: Layout, retention_days: int) -> list[str]:
    step_columns = (
        "SpanIndex", "StepStatus", "CostUsd", "InputBytes", "OutputBytes", "Trigger", "Version",
        "SessionId",
    )  # fmt: skip
    # The view filling `runs` reads `Pending`, which version 3 adds: it is
    # made (and `runs` backfilled) there.
    return [
        *add_columns(SPANS, step_columns, layout),
        *add_indexes(SPANS, layout),
        *create_table(RUNS, layout, retention_days),
    ]


def _backfill_runs(layout: Layout) -> str:
    # Spans stored before the view (or this version of it) existed; the
    # aggregates are idempotent, so a span the view also saw is not counted twice.
    source = quote_identifier(layout.stored(SPANS.name))
    return f"INSERT INTO {quote_identifier(layout.stored(RUNS.name))} " + RUNS_VIEW_SELECT.format(
        source=source
    )


def _live(layout: Layout, retention_days: int) -> list[str]:
    # `Pending` joins the sorting key, so a pending span and the span it
    # announces are two rows; ClickHouse allows extending the key only with
    # a column added in the same ALTER (and one without a default expression).
    spans = quote_identifier(layout.stored(SPANS.name))
    return [
        f"ALTER TABLE {spans}{layout.on_cluster()} ADD COLUMN IF NOT EXISTS `Pending` UInt8, "
        f"MODIFY ORDER BY {SPANS.order_by}",
        *add_columns(SPANS, ("Pending",), layout)[1:],  # the Distributed table, if any
        *add_indexes(SPANS, layout),
        *create_table(LOGS, layout, retention_days),
        f"DROP VIEW IF EXISTS {quote_identifier('runs_mv')}{layout.on_cluster()}",
        create_view("runs_mv", RUNS, SPANS, RUNS_VIEW_SELECT, layout),
        _backfill_runs(layout),
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "spans table", lambda layout, days: create_table(SPANS, layout, days)),
    Migration(2, "step columns and the runs table", _runs),
    Migration(3, "pending spans, logs and the live tail index", _live),
    Migration(
        4,
        "span warnings and the runs tail index",
        lambda layout, _: [*add_columns(SPANS, ("Warnings",), layout), *add_indexes(RUNS, layout)],
    ),
    Migration(
        5,
        "cheaper inserts and merges of spans and logs",
        lambda layout, _: [
            modify_settings(table, tuple(k for k, _ in INGEST_SETTINGS), layout)
            for table in (SPANS, LOGS)
        ],
    ),
    # Empty at first: the query API's first refresh folds every run into it.
    Migration(6, "the run list", lambda layout, days: create_table(RUN_LIST, layout, days)),
    Migration(
        7,
        "run list rows deleted through patch parts",
        lambda layout, _: [modify_settings(RUN_LIST, tuple(k for k, _ in PATCH_SETTINGS), layout)],
    ),
    Migration(
        8,
        "runs found by id in the run list",
        lambda layout, _: [
            *add_indexes(RUN_LIST, layout),
            materialize_index(RUN_LIST, "idx_run_id", layout),
        ],
    ),
)

MIGRATIONS_TABLE = Table(
    name="tracehouse_migrations",
    columns=(
        Column("version", "UInt32"),
        Column("name", "String"),
        Column("applied_at", "DateTime64(3)", default="now64(3)"),
    ),
    engine="ReplacingMergeTree",
    order_by="version",
)


# How far back, before the newest run, spans are folded into runs again at start.
HEAL_WINDOW_S = 300


def heal_runs(client: Client, layout: Layout) -> None:
    """Fold the most recent spans into `runs` again, after a crash.

    The view writes a run's part just after its spans' part; a process
    killed between the two leaves spans no run shows. The aggregates are
    idempotent, so folding the last minutes again costs a scan and changes
    nothing else.
    """
    runs = quote_identifier(layout.stored(RUNS.name))
    spans = quote_identifier(layout.stored(SPANS.name))
    recent = (
        f"(SELECT * FROM {spans} WHERE IngestedAt >= "
        f"(SELECT max(LastSeen) FROM {runs}) - toIntervalSecond({HEAL_WINDOW_S}))"
    )
    client.command(f"INSERT INTO {runs} " + RUNS_VIEW_SELECT.format(source=recent))


def applied_versions(client: Client) -> set[int]:
    rows = client.query("SELECT DISTINCT version FROM tracehouse_migrations").result_rows
    return {int(row[0]) for row in rows}


def migrate(client: Client, layout: Layout, retention_days: int) -> list[int]:
    """Apply what is missing, then the retention; the versions applied now."""
    # The bookkeeping table is not sharded: every node keeps the whole list.
    bookkeeping = Layout(cluster=layout.cluster, distributed=False)
    for statement in create_table(MIGRATIONS_TABLE, bookkeeping, 0):
        client.command(statement)
    done = applied_versions(client)
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements(layout, retention_days):
            client.command(statement)
        client.insert(
            "tracehouse_migrations",
            [[migration.version, migration.name]],
            column_names=["version", "name"],
        )
        log.info("applied migration %d: %s", migration.version, migration.name)
        applied.append(migration.version)
    for table in (SPANS, LOGS, RUNS, RUN_LIST):
        apply_retention(client, table, layout, retention_days)
    return applied


def apply_retention(client: Client, table: Table, layout: Layout, retention_days: int) -> None:
    """Bring the table's TTL to the configured retention when it differs."""
    name = layout.stored(table.name)
    engine = client.query(
        "SELECT engine_full FROM system.tables"
        " WHERE database = currentDatabase() AND name = {n:String}",
        parameters={"n": name},
    ).result_rows[0][0]
    wanted = ttl_sql(table, retention_days)
    current = engine.partition(" TTL ")[2].partition(" SETTINGS ")[0].strip()
    if current == wanted:
        return
    client.command(modify_ttl(table, layout, retention_days))
    log.info(
        "retention of %s set to %s", table.name, f"{retention_days} days" if wanted else "forever"
    )

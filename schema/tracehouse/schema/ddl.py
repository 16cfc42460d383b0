"""The ClickHouse DDL, from one source for a single node and for a cluster.

A `Table` says what a table is; `Layout` says where it lives. On a single
node a table is one `*MergeTree`. On a cluster it is a `Replicated*MergeTree`
`<name>_local` on every replica plus a `Distributed` `<name>` sharded by
trace, so that a run (its trace) lives on one shard and per-run reads and
deduplication stay shard-local.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracehouse.schema.rows import SPAN_COLUMNS, SPANS_TABLE, Column


@dataclass(frozen=True, slots=True)
class Layout:
    """Where tables live: `cluster` empty for a single node."""

    cluster: str = ""
    # ClickHouse Cloud has no Distributed engine; there the replicated tables
    # are queried directly.
    distributed: bool = True

    def on_cluster(self) -> str:
        return f" ON CLUSTER {quote_identifier(self.cluster)}" if self.cluster else ""


SINGLE_NODE = Layout()


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    engine: str  # MergeTree family member, without the Replicated prefix
    order_by: str
    partition_by: str = ""
    shard_key: str = "rand()"
    ttl_column: str = ""  # a DateTime64 column; rows older than the retention are dropped
    settings: tuple[tuple[str, str], ...] = ()


SPANS = Table(
    name=SPANS_TABLE,
    columns=SPAN_COLUMNS,
    # A retried export writes the same span again; Replacing collapses rows
    # with one key, and reads use FINAL until merges have.
    engine="ReplacingMergeTree",
    order_by="(ProjectId, TraceId, SpanId)",
    partition_by="toDate(Timestamp)",
    shard_key="cityHash64(TraceId)",
    # Retention counts from arrival: a span whose clock says 2019 is still kept
    # for the retention after it was acknowledged.
    ttl_column="IngestedAt",
    settings=(("ttl_only_drop_parts", "1"),),
)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def column_sql(column: Column) -> str:
    parts = [quote_identifier(column.name), column.type]
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.codec:
        parts.append(f"CODEC({column.codec})")
    return " ".join(parts)


def ttl_sql(table: Table, retention_days: int) -> str:
    """The TTL clause for a retention, or "" to keep rows forever."""
    if not table.ttl_column or retention_days <= 0:
        return ""
    # Unquoted, as ClickHouse prints it back in system.tables (see apply_retention).
    return f"toDateTime({table.ttl_column}) + toIntervalDay({retention_days})"


def create_table(table: Table, layout: Layout, retention_days: int) -> list[str]:
    """CREATE statements for a table in a layout, idempotent."""
    local_name = f"{table.name}_local" if layout.cluster and layout.distributed else table.name
    engine = f"Replicated{table.engine}" if layout.cluster else table.engine
    columns = ",\n    ".join(column_sql(c) for c in table.columns)
    clauses = [f"ENGINE = {engine}"]
    if table.partition_by:
        clauses.append(f"PARTITION BY {table.partition_by}")
    clauses.append(f"ORDER BY {table.order_by}")
    if ttl := ttl_sql(table, retention_days):
        clauses.append(f"TTL {ttl}")
    if table.settings:
        clauses.append("SETTINGS " + ", ".join(f"{k} = {v}" for k, v in table.settings))
    statements = [
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(local_name)}{layout.on_cluster()} (\n"
        f"    {columns}\n)\n" + "\n".join(clauses)
    ]
    if local_name != table.name:
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {quote_identifier(table.name)}{layout.on_cluster()} "
            f"AS {quote_identifier(local_name)} ENGINE = Distributed("
            f"{quote_identifier(layout.cluster)}, currentDatabase(), "
            f"{quote_identifier(local_name)}, {table.shard_key})"
        )
    return statements


def modify_ttl(table: Table, layout: Layout, retention_days: int) -> str:
    """ALTER for a new retention; existing parts are not rewritten, merges apply it."""
    name = f"{table.name}_local" if layout.cluster and layout.distributed else table.name
    ttl = ttl_sql(table, retention_days)
    action = f"MODIFY TTL {ttl}" if ttl else "REMOVE TTL"
    return (
        f"ALTER TABLE {quote_identifier(name)}{layout.on_cluster()} {action} "
        "SETTINGS materialize_ttl_after_modify = 0"
    )

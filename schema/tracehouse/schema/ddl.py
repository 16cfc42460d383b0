"""The ClickHouse DDL, from one source for a single node and for a cluster.

A `Table` says what a table is; `Layout` says where it lives. On a single
node a table is one `*MergeTree`. On a cluster it is a `Replicated*MergeTree`
`<name>_local` on every replica plus a `Distributed` `<name>` sharded by
trace, so that a run (its trace) lives on one shard and per-run reads and
deduplication stay shard-local.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tracehouse.schema.rows import (
    LOG_COLUMNS,
    LOGS_TABLE,
    PREVIEW_CHARS,
    ROOT_DETAIL_TUPLE,
    ROOT_KEY_TUPLE,
    RUN_COLUMNS,
    RUN_LIST_COLUMNS,
    RUN_LIST_TABLE,
    RUNS_TABLE,
    SPAN_COLUMNS,
    SPANS_TABLE,
    Column,
)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where tables live: `cluster` empty for a single node."""

    cluster: str = ""
    # ClickHouse Cloud has no Distributed engine; there the replicated tables
    # are queried directly.
    distributed: bool = True

    def on_cluster(self) -> str:
        return f" ON CLUSTER {quote_identifier(self.cluster)}" if self.cluster else ""

    @property
    def sharded(self) -> bool:
        """Whether each table is a `_local` table behind a Distributed one."""
        return bool(self.cluster) and self.distributed

    def stored(self, name: str) -> str:
        """The table that holds a table's rows here: `<name>_local` when sharded."""
        return f"{name}_local" if self.sharded else name


SINGLE_NODE = Layout()

# What inserts and merges of spans and logs cost. Parts under 256 MiB are
# written "compact": one data file instead of two per column and subcolumn
# (~150 for spans); creating those files was half of an insert's time here
# (perf: ext4 inode allocation, 65-75 -> 25 us/span for 5,000-span inserts).
# Merged parts past it turn wide, for column reads. A merge selector base of
# 10 (5 by default) lets more parts of a size gather before they are merged:
# each span is rewritten fewer times (merge CPU at saturation 6.2 -> 4.7 s).
INGEST_SETTINGS = (("min_bytes_for_wide_part", str(256 * 2**20)), ("merge_selector_base", "10"))

# Rows deleted at every refresh (the run list's replaced rows) are masked by a
# small patch part, not by a mutation writing a new mask into every part:
# under 10,000 spans/s a refresh's DELETE took 97 ms, not 512 (up to 1.5 s),
# and ingest's p99 fell 167 -> 132 ms.
PATCH_SETTINGS = (("enable_block_number_column", "1"), ("enable_block_offset_column", "1"))


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
    indexes: tuple[tuple[str, str], ...] = ()  # (name, "expression TYPE ... GRANULARITY n")


SPANS = Table(
    name=SPANS_TABLE,
    columns=SPAN_COLUMNS,
    # A retried export writes the same span again; Replacing collapses rows
    # with one key, and reads use FINAL until merges have.
    engine="ReplacingMergeTree",
    order_by="(ProjectId, TraceId, SpanId, Pending)",
    partition_by="toDate(Timestamp)",
    shard_key="cityHash64(TraceId)",
    # A run id is a span id (a sub-run's, or the root's) or, while the root
    # has not arrived, the parent id its steps name: found without the trace.
    indexes=(
        ("idx_span_id", "SpanId TYPE bloom_filter(0.01) GRANULARITY 1"),
        ("idx_parent_span_id", "ParentSpanId TYPE bloom_filter(0.01) GRANULARITY 1"),
        # The live tail reads what arrived in the last seconds.
        ("idx_ingested_at", "IngestedAt TYPE minmax GRANULARITY 1"),
    ),
    # Retention counts from arrival: a span whose clock says 2019 is still kept
    # for the retention after it was acknowledged.
    ttl_column="IngestedAt",
    # A trace is a point lookup of ~1.5 KB rows: small granules read little.
    settings=(("ttl_only_drop_parts", "1"), ("index_granularity", "1024"), *INGEST_SETTINGS),
)


LOGS = Table(
    name=LOGS_TABLE,
    columns=LOG_COLUMNS,
    # Log records have no id: a record is its span, time, chunk place and a
    # hash of everything else it says, so a retried export collapses into the
    # first while two different records of one span and moment both stay.
    engine="ReplacingMergeTree",
    order_by=(
        "(ProjectId, TraceId, SpanId, Timestamp, ChunkIndex, cityHash64(Body, EventName, "
        "SeverityText, SeverityNumber, ObservedTimestamp, TraceFlags, LogAttributes, "
        "ServiceName, ScopeName))"
    ),
    partition_by="toDate(Timestamp)",
    shard_key="cityHash64(TraceId)",
    indexes=(("idx_ingested_at", "IngestedAt TYPE minmax GRANULARITY 1"),),
    ttl_column="IngestedAt",
    settings=(("ttl_only_drop_parts", "1"), ("index_granularity", "1024"), *INGEST_SETTINGS),
)


RUNS = Table(
    name=RUNS_TABLE,
    columns=RUN_COLUMNS,
    engine="AggregatingMergeTree",
    order_by="(ProjectId, TraceId)",
    partition_by="toDate(LastSeen)",
    shard_key="cityHash64(TraceId)",
    # The live tail reads the runs that moved in the last seconds.
    indexes=(("idx_last_seen", "LastSeen TYPE minmax GRANULARITY 1"),),
    ttl_column="LastSeen",
    settings=(("ttl_only_drop_parts", "1"), ("index_granularity", "1024")),
)

RUN_LIST = Table(
    name=RUN_LIST_TABLE,
    columns=RUN_LIST_COLUMNS,
    # Rows are replaced by delete and insert (lightweight DELETE), not by
    # merges: a plain table needs no FINAL, and its counts read each row once.
    engine="MergeTree",
    # Newest first is a reverse read of the sorting key: a page reads a granule.
    order_by="(ProjectId, started_ns, run_id)",
    shard_key="cityHash64(trace_id)",
    # The rows of runs that moved, found among a million; the rows of a
    # refresh under way, folded after the last mark; a run's trace, found by
    # its id (a scan of every run id took 10-20 ms at a million runs).
    indexes=(
        ("idx_trace_id", "trace_id TYPE bloom_filter(0.01) GRANULARITY 1"),
        ("idx_folded_at", "folded_at TYPE minmax GRANULARITY 1"),
        ("idx_run_id", "run_id TYPE bloom_filter(0.01) GRANULARITY 1"),
    ),
    # Unpartitioned, so runs expire row by row in merges, as their runs do.
    ttl_column="last_seen",
    settings=PATCH_SETTINGS,
)

_PREVIEW = f"substringUTF8({{}}, 1, {PREVIEW_CHARS})"
_RUN_KINDS = "('agent', 'workflow')"

# Per insert block of `spans`, the partial run row of each trace in it.
RUNS_VIEW_SELECT = f"""
SELECT
    ProjectId,
    TraceId,
    min(Timestamp) AS Start,
    max(IngestedAt) AS LastSeen,
    min((Timestamp, ParentSpanId, StepName)) AS Topmost,
    max(CAST(if(ParentSpanId = '',
        (2 - Pending, SpanId, StepName, StepKind, StepStatus, Trigger, Version, SessionId,
         if(StepKind IN {_RUN_KINDS}, `Links.SpanId`[1], '')),
        (0, '', '', '', '', '', '', '', '')),
        '{ROOT_KEY_TUPLE}')) AS RootKey,
    max(CAST(if(ParentSpanId = '',
        (2 - Pending, Timestamp + toIntervalNanosecond(Duration), ErrorType, ErrorMessage,
         {_PREVIEW.format("Input")}, {_PREVIEW.format("Output")}, Model, InputTokens,
         OutputTokens, TotalTokens, if(StepKind IN {_RUN_KINDS}, `Links.TraceId`[1], '')),
        (0, toDateTime64(0, 9), '', '', '', '', '', 0, 0, 0, '')),
        '{ROOT_DETAIL_TUPLE}')) AS RootDetail,
    max(ServiceName) AS Service,
    groupUniqArrayArray(if(StepStatus = 'failed', [ParentSpanId], [])) AS FailedParents,
    groupUniqArrayArray(
        if(StepStatus = 'failed' AND StepKind IN {_RUN_KINDS}, [ParentSpanId], [])
    ) AS FailedAgentParents,
    min(if(StepKind = 'llm', (0, Timestamp, {_PREVIEW.format("Input")}),
        (1, toDateTime64(0, 9), ''))) AS FirstLlm,
    max(if(StepKind = 'llm' AND Pending = 0,
        (1, Timestamp + toIntervalNanosecond(Duration), {_PREVIEW.format("Output")}, Model),
        (0, toDateTime64(0, 9), '', ''))) AS LastLlm
FROM {{source}}
GROUP BY ProjectId, TraceId
"""


def create_view(name: str, target: Table, source: Table, select: str, layout: Layout) -> str:
    """A materialized view feeding `target` from inserts into `source` (shard-local)."""
    query = select.format(source=quote_identifier(layout.stored(source.name)))
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {quote_identifier(name)}{layout.on_cluster()} "
        f"TO {quote_identifier(layout.stored(target.name))} AS {query}"
    )


def add_columns(table: Table, names: tuple[str, ...], layout: Layout) -> list[str]:
    """ALTERs adding the named columns of `table`, idempotent; on a cluster, to both tables."""
    added = [c for c in table.columns if c.name in names]

    def alter(name: str, with_codec: bool) -> str:
        columns = ", ".join(
            f"ADD COLUMN IF NOT EXISTS {column_sql(c if with_codec else replace(c, codec=None))}"
            for c in added
        )
        return f"ALTER TABLE {quote_identifier(name)}{layout.on_cluster()} {columns}"

    if layout.sharded:
        # A Distributed table stores nothing, so its columns take no codec.
        return [alter(layout.stored(table.name), True), alter(table.name, False)]
    return [alter(table.name, True)]


def add_indexes(table: Table, layout: Layout) -> list[str]:
    return [
        f"ALTER TABLE {quote_identifier(layout.stored(table.name))}{layout.on_cluster()} "
        f"ADD INDEX IF NOT EXISTS {quote_identifier(name)} {spec}"
        for name, spec in table.indexes
    ]


def materialize_index(table: Table, name: str, layout: Layout) -> str:
    """ALTER building an index added later for the rows already stored (a mutation)."""
    return (
        f"ALTER TABLE {quote_identifier(layout.stored(table.name))}{layout.on_cluster()} "
        f"MATERIALIZE INDEX {quote_identifier(name)}"
    )


def modify_settings(table: Table, names: tuple[str, ...], layout: Layout) -> str:
    """ALTER bringing the named settings of `table` to their values here."""
    values = ", ".join(f"{k} = {v}" for k, v in table.settings if k in names)
    return (
        f"ALTER TABLE {quote_identifier(layout.stored(table.name))}{layout.on_cluster()} "
        f"MODIFY SETTING {values}"
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
    local_name = layout.stored(table.name)
    engine = f"Replicated{table.engine}" if layout.cluster else table.engine
    columns = ",\n    ".join(
        [column_sql(c) for c in table.columns]
        + [f"INDEX {quote_identifier(name)} {spec}" for name, spec in table.indexes]
    )
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
    name = layout.stored(table.name)
    ttl = ttl_sql(table, retention_days)
    action = f"MODIFY TTL {ttl}" if ttl else "REMOVE TTL"
    return (
        f"ALTER TABLE {quote_identifier(name)}{layout.on_cluster()} {action} "
        "SETTINGS materialize_ttl_after_modify = 0"
    )

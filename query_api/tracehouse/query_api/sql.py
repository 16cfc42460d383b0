"""All SQL of the query API, in one place, with bound parameters only.

Nothing a client sends is ever formatted into these strings: values travel
as ClickHouse query parameters (`{name:Type}`), and the only fragments
joined in are the fixed ones below, chosen by which filters are present.
Reads of `spans` use FINAL: a retried export wrote some spans twice, and
until ClickHouse merges them only FINAL hides the copy. A step can also
have a second row, its pending span (`Pending = 1`): reads count it once
and prefer the span itself.

Conditions on sorting-key columns (project, trace, span) go in PREWHERE,
which ClickHouse applies before FINAL: that is correct for key columns (all
copies of a row share them) and spares reading every column of every
granule the primary key could not rule out, in every part: a point read of
51 traces went from ~1.6 s to ~0.2 s at 20M spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracehouse.schema.ddl import RUN_KEY_COLUMNS
from tracehouse.schema.rows import PREVIEW_CHARS

# The top-level run of each trace, folded from the runs table, with the
# status rules the whole API shares (and the run list's snapshot, built by
# ClickHouse with the same text).
_RUN_KEY_COLUMNS = RUN_KEY_COLUMNS

# FINAL folds a trace's partial rows as a GROUP BY would, and skips the work
# for parts that merges already folded: far cheaper on big tables.
_RUNS_FROM = """
FROM (SELECT *, RootKey AS root, Topmost AS topmost FROM runs FINAL
      PREWHERE ProjectId = {project:String} /*scope*/)
"""

# A few traces' partial rows folded with GROUP BY, as the columns of `runs`
# (`/*traces*/`: the traces, a set or a subquery). PREWHERE on the sorting
# key reads their granules only; FINAL would merge every part they might be
# in (a page of 50 headers: ~120 against ~200 ms at a million runs).
_FOLDED = """
(SELECT TraceId, run_start AS Start, last_seen AS LastSeen, root, topmost,
    failed AS FailedParents, failed_agents AS FailedAgentParents, detail AS RootDetail,
    service AS Service, first_llm AS FirstLlm, last_llm AS LastLlm
FROM (
    SELECT TraceId, min(Start) AS run_start, max(LastSeen) AS last_seen,
        max(RootKey) AS root, min(Topmost) AS topmost,
        groupUniqArrayArray(FailedParents) AS failed,
        groupUniqArrayArray(FailedAgentParents) AS failed_agents,
        max(RootDetail) AS detail, max(Service) AS service,
        min(FirstLlm) AS first_llm, max(LastLlm) AS last_llm
    FROM runs
    PREWHERE ProjectId = {project:String} AND TraceId IN /*traces*/
    GROUP BY TraceId
))"""

# Headers of the top-level runs of the given traces.
RUNS_SQL = f"""
SELECT {_RUN_KEY_COLUMNS},
    Service AS service,
    if(root.seen > 0, toUnixTimestamp64Nano(RootDetail.end), NULL) AS ended_ns,
    (RootDetail.input_tokens, RootDetail.output_tokens, RootDetail.total_tokens) AS own_tokens,
    if(RootDetail.model != '', RootDetail.model, LastLlm.4) AS model,
    (RootDetail.error_type, RootDetail.error_message) AS error,
    if(RootDetail.input != '', RootDetail.input, FirstLlm.3) AS input_preview,
    if(RootDetail.output != '', RootDetail.output, LastLlm.3) AS output_preview,
    RootDetail.link_trace AS link_trace,
    toUnixTimestamp64Nano(LastSeen) AS last_seen_ns
FROM {_FOLDED.replace("/*traces*/", "{traces:Array(String)}")}
"""

# What a run header needs from every step of its trace. Without FINAL: the
# copies a retried export wrote are the same span, so keeping one of each
# (LIMIT 1 BY) sums the same, and skips FINAL's merge of every part of
# `spans` the traces' keys fall in (~200 ms for a page of 50 at 20M spans,
# against ~15 ms).
TRACE_TOTALS_SQL = """
SELECT
    TraceId,
    uniqExact(SpanId) AS spans,
    countIf(StepKind = 'llm' AND Pending = 0) AS llm_steps,
    sumIf(InputTokens, StepKind = 'llm' AND Pending = 0) AS input_tokens,
    sumIf(OutputTokens, StepKind = 'llm' AND Pending = 0) AS output_tokens,
    sumIf(TotalTokens, StepKind = 'llm' AND Pending = 0) AS total_tokens,
    sumOrNullIf(CostUsd, Pending = 0) AS cost_usd,
    argMinIf((ErrorType, ErrorMessage), Timestamp, StepStatus IN ('failed', 'cancelled'))
        AS first_error
FROM (
    SELECT TraceId, SpanId, Pending, StepKind, InputTokens, OutputTokens, TotalTokens, CostUsd,
        ErrorType, ErrorMessage, Timestamp, StepStatus
    FROM spans
    PREWHERE ProjectId = {project:String} AND TraceId IN {traces:Array(String)}
    LIMIT 1 BY TraceId, SpanId, Pending
)
GROUP BY TraceId
"""

TRACE_ROWS_SQL = f"""
SELECT
    SpanId, ParentSpanId, StepKind, StepName, StepStatus,
    toUnixTimestamp64Nano(Timestamp), Duration, SpanIndex, Model, InputTokens, OutputTokens,
    TotalTokens,
    CostUsd, ErrorType, ErrorMessage, substringUTF8(Input, 1, {PREVIEW_CHARS}),
    substringUTF8(Output, 1, {PREVIEW_CHARS}), Trigger, Version, SessionId, ServiceName, Warnings,
    Pending
FROM spans FINAL
PREWHERE ProjectId = {{project:String}} AND TraceId = {{trace:String}}
"""

TRACE_EXISTS_SQL = """
SELECT 1 FROM runs WHERE ProjectId = {project:String} AND TraceId = {trace:String} LIMIT 1
"""

FIND_TRACE_SQL = """
SELECT TraceId FROM spans
WHERE ProjectId = {project:String} AND (SpanId = {id:String} OR ParentSpanId = {id:String})
LIMIT 1
"""


# Every run a list can show: top-level runs (one per trace; a root that
# links into another trace's run is a sub-run) and, on request, the agent
# and workflow spans below them.
#
# Top-level runs come from the snapshot ClickHouse rebuilds every 30 s
# (`run_snapshot`: one narrow row per run, newest last in its sorting key),
# except runs with rows that arrived after the snapshot read `runs` (less the
# store's margin, `snapshot_margin` ns, for inserts in flight): those are
# folded fresh from `runs` and stand in for their snapshot row (all fresh
# before a first snapshot). So a list of a million runs reads one narrow row
# per run, or a granule for a first page, instead of folding them all. One
# refresh wrote every row of a snapshot: they share its `snapshot_at`.
_FRESH_TRACES = """
SELECT DISTINCT TraceId FROM runs
WHERE ProjectId = {project:String} AND LastSeen >= fromUnixTimestamp64Nano(greatest(0, (
    SELECT toUnixTimestamp64Nano(snapshot_at) FROM run_snapshot
    WHERE ProjectId = {project:String} LIMIT 1) - {snapshot_margin:Int64}))
"""

_LIST_COLUMNS = (
    "trace_id, run_id, name, status, trigger, version, session_id, started_ns, is_sub_run, "
    "nested, last_seen_ns"
)

_SNAPSHOT = f"""
SELECT {_LIST_COLUMNS.replace("nested", "0 AS nested")}
FROM run_snapshot
WHERE ProjectId = {{project:String}}"""
_SNAPSHOT_RUNS = f"{_SNAPSHOT} AND trace_id NOT IN /*fresh*/"
# The snapshot's rows of the runs read fresh (found by its trace id index).
_SNAPSHOT_MOVED = f"{_SNAPSHOT} AND trace_id IN /*fresh*/"

_FRESH_RUNS = f"""
SELECT {_LIST_COLUMNS.replace("nested", "0 AS nested")}
FROM (
    SELECT {_RUN_KEY_COLUMNS}, toUnixTimestamp64Nano(LastSeen) AS last_seen_ns
    FROM {_FOLDED.replace("/*traces*/", "/*fresh*/")}
)
"""

_NESTED = """
SELECT TraceId AS trace_id, SpanId AS run_id, StepName AS name, StepStatus AS status,
    if(Trigger != '', Trigger, 'subagent') AS trigger, Version AS version,
    SessionId AS session_id, toUnixTimestamp64Nano(Timestamp) AS started_ns, 1 AS is_sub_run,
    1 AS nested, 0 AS last_seen_ns
FROM spans FINAL
WHERE ProjectId = {project:String} AND StepKind IN ('agent', 'workflow') AND ParentSpanId != ''
ORDER BY Pending LIMIT 1 BY TraceId, SpanId
"""


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What a run list is narrowed to; every field optional."""

    statuses: tuple[str, ...] = ()
    q: str = ""
    name: str | None = None
    trigger: str | None = None
    version: str | None = None
    session: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    include_subruns: bool = False
    traces: tuple[str, ...] = ()  # only runs of these traces (the live list); empty: all


def _where(f: RunFilter, with_status: bool) -> tuple[list[str], dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if with_status and f.statuses:
        clauses.append("status IN {statuses:Array(String)}")
        params["statuses"] = list(f.statuses)
    if f.q:
        match = ["positionCaseInsensitiveUTF8(name, {q:String}) > 0"]
        params["q"] = f.q
        prefix = f.q.strip().lower()
        if prefix and all(c in "0123456789abcdef" for c in prefix):
            match += ["startsWith(run_id, {q_id:String})", "startsWith(trace_id, {q_id:String})"]
            params["q_id"] = prefix
        clauses.append("(" + " OR ".join(match) + ")")
    for column, value in (("name", f.name), ("trigger", f.trigger), ("version", f.version),
                          ("session_id", f.session)):  # fmt: skip
        if value is not None:
            clauses.append(f"{column} = {{{column}:String}}")
            params[column] = value
    if f.since_ns is not None:
        clauses.append("started_ns >= {since:Int64}")
        params["since"] = f.since_ns
    if f.until_ns is not None:
        clauses.append("started_ns <= {until:Int64}")
        params["until"] = f.until_ns
    if not f.include_subruns:
        clauses.append("NOT is_sub_run")
    if f.traces:
        clauses.append("trace_id IN {traces:Array(String)}")
        params["traces"] = list(f.traces)
    return clauses, params


# The store reads the fresh runs' traces first (FRESH_TRACES_SQL) and binds
# them as `fresh`: a set known before the query lets the primary key of
# `runs` and the index of the snapshot find them (a subquery's set is built
# too late for that, and costs a ~20 ms scan of every trace id). Past this
# many (before a first snapshot, say) the queries find them themselves.
FRESH_INLINE_MAX = 10_000
FRESH_TRACES_SQL = _FRESH_TRACES + f"LIMIT {FRESH_INLINE_MAX + 1}"


def _sources(f: RunFilter, fresh_bound: bool) -> list[str]:
    fresh = "{fresh:Array(String)}" if fresh_bound else f"({_FRESH_TRACES})"
    sources = [_SNAPSHOT_RUNS, _FRESH_RUNS, _NESTED] if f.include_subruns else [
        _SNAPSHOT_RUNS, _FRESH_RUNS]  # fmt: skip
    return [source.replace("/*fresh*/", fresh) for source in sources]


def list_runs(
    f: RunFilter, cursor: tuple[int, str] | None, limit: int, fresh_bound: bool = False
) -> tuple[str, dict[str, Any]]:
    """Newest first, one page and one more: (trace_id, run_id, started_ns, nested, last_seen_ns).

    `fresh_bound`: the caller binds `fresh`, the traces of FRESH_TRACES_SQL.
    """
    clauses, params = _where(f, with_status=True)
    if cursor is not None:
        # Keyset paging: runs that arrive meanwhile sort before the cursor,
        # so paging on never repeats or skips one. The bound on the start
        # alone lets the sorting key skip what is newer.
        clauses.append("(started_ns, run_id) < ({cursor_start:Int64}, {cursor_id:String})")
        clauses.append("started_ns <= {cursor_start:Int64}")
        params |= {"cursor_start": cursor[0], "cursor_id": cursor[1]}
    params["limit"] = limit + 1
    where = " AND ".join(clauses) or "1"
    order = "ORDER BY started_ns DESC, run_id DESC LIMIT {limit:UInt32}"
    # Each source keeps its own first page (the snapshot's is a reverse read
    # of its sorting key), then the pages are merged.
    pages = " UNION ALL ".join(
        f"(SELECT {_LIST_COLUMNS} FROM ({source}) WHERE {where} {order})"
        for source in _sources(f, fresh_bound)
    )
    sql = f"SELECT trace_id, run_id, started_ns, nested, last_seen_ns FROM ({pages}) {order}"
    return sql, params


def count_runs(f: RunFilter, fresh_bound: bool = False) -> tuple[str, dict[str, Any]]:
    """Runs per status under every filter but the status one (`fresh_bound` as in list_runs).

    The whole snapshot is counted, then its rows of runs that moved are
    taken off again and those runs counted fresh: cheaper than asking each
    of a million snapshot rows whether its run moved.
    """
    clauses, params = _where(f, with_status=False)
    where = " AND ".join(clauses) or "1"
    # The whole snapshot straight from its table, so that ClickHouse can
    # answer from its per-status projection when nothing but the project and
    # `is_sub_run` narrows it.
    whole = "run_snapshot WHERE ProjectId = {project:String} AND"
    fresh = "{fresh:Array(String)}" if fresh_bound else f"({_FRESH_TRACES})"
    moved = _SNAPSHOT_MOVED.replace("/*fresh*/", fresh)
    signed = [(whole, ""), (f"({moved}) WHERE", "-")] + [
        (f"({source}) WHERE", "") for source in _sources(f, fresh_bound)[1:]
    ]
    counted = " UNION ALL ".join(
        f"(SELECT status, {sign}toInt64(count()) AS n FROM {source} {where} GROUP BY status)"
        for source, sign in signed
    )
    return f"SELECT status, sum(n) FROM ({counted}) GROUP BY status", params


def stats(f: RunFilter, bucket_seconds: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Dashboard aggregates over top-level runs in a time range (and their steps)."""
    clauses, params = _where(f, with_status=True)
    where = " AND ".join(clauses) or "1"
    runs = f"""(SELECT * FROM (SELECT {_RUN_KEY_COLUMNS}, Service AS service,
        if(root.seen > 0, toUnixTimestamp64Nano(RootDetail.end), NULL) AS ended_ns,
        (RootDetail.input_tokens, RootDetail.output_tokens, RootDetail.total_tokens)
            AS own_tokens
        {_RUNS_FROM.replace("/*scope*/", "")}) WHERE {where})"""
    params["bucket"] = bucket_seconds
    steps_since = "Timestamp >= fromUnixTimestamp64Nano({since:Int64})" if f.since_ns else "1"
    steps_until = "Timestamp <= fromUnixTimestamp64Nano({until:Int64})" if f.until_ns else "1"
    duration = "(ended_ns - started_ns) / 1e6"
    finished = "status IN ('completed', 'failed', 'cancelled') AND ended_ns IS NOT NULL"
    totals = f"""
        SELECT TraceId AS trace_id, countIf(StepKind = 'llm') AS llm_steps,
            sumIf(InputTokens, StepKind = 'llm') AS input_tokens,
            sumIf(OutputTokens, StepKind = 'llm') AS output_tokens,
            sumIf(TotalTokens, StepKind = 'llm') AS total_tokens,
            sumOrNull(CostUsd) AS cost_usd
        FROM spans FINAL
        WHERE ProjectId = {{project:String}} AND Pending = 0 AND {steps_since} AND {steps_until}
        GROUP BY TraceId"""
    bucket_start = (
        "toUnixTimestamp(toStartOfInterval(fromUnixTimestamp64Nano(started_ns),"
        " toIntervalSecond({bucket:UInt32})))"
    )
    quantiles = f"quantilesIf(0.5, 0.95, 0.99)({duration}, {finished})"
    return {
        "series": (
            f"SELECT {bucket_start} AS b, status, count() FROM {runs} GROUP BY b, status",
            params,
        ),
        "series_durations": (
            f"SELECT {bucket_start} AS b, {quantiles} FROM {runs} GROUP BY b",
            params,
        ),
        "overall": (f"SELECT status, count() FROM {runs} GROUP BY status", params),
        "durations": (f"SELECT {quantiles} FROM {runs}", params),
        "by_model": (
            f"""SELECT Model, count(), sum(InputTokens), sum(OutputTokens), sum(TotalTokens),
                sumOrNull(CostUsd)
            FROM spans FINAL
            WHERE ProjectId = {{project:String}} AND StepKind IN ('llm', 'embedding')
                AND Pending = 0
                AND {steps_since} AND {steps_until}
            GROUP BY Model ORDER BY sum(TotalTokens) DESC LIMIT 200""",
            params,
        ),
        "by_run_name": (
            f"""SELECT r.name, count(),
                sum(if(t.llm_steps > 0, t.input_tokens, r.own_tokens.1)),
                sum(if(t.llm_steps > 0, t.output_tokens, r.own_tokens.2)),
                sum(if(t.llm_steps > 0, t.total_tokens, r.own_tokens.3)),
                sumOrNull(t.cost_usd), countIf(r.status = 'failed')
            FROM {runs} AS r LEFT JOIN ({totals}) AS t ON r.trace_id = t.trace_id
            GROUP BY r.name ORDER BY count() DESC LIMIT 200""",
            params,
        ),
    }


STEP_SQL = """
SELECT *, toUnixTimestamp64Nano(Timestamp) AS start_ns,
    arrayMap(t -> toUnixTimestamp64Nano(t), `Events.Timestamp`) AS event_ns
FROM spans FINAL
PREWHERE ProjectId = {project:String} AND TraceId = {trace:String} AND SpanId = {step:String}
ORDER BY Pending
LIMIT 1
"""


# Runs with rows that arrived after a moment: what the live tail announces.
# Spans are found through `runs`, which the materialized view fills just
# after the spans themselves are visible: a run announced from `spans`
# could be read before its header moved, and never announced again.
ARRIVED_SQL = """
SELECT ProjectId, TraceId, toUnixTimestamp64Nano(max(IngestedAt))
FROM (
    SELECT ProjectId, TraceId, LastSeen AS IngestedAt FROM runs
    WHERE LastSeen > fromUnixTimestamp64Nano({since:Int64})
    UNION ALL
    SELECT ProjectId, TraceId, IngestedAt FROM logs
    WHERE IngestedAt > fromUnixTimestamp64Nano({since:Int64}) AND TraceId != ''
)
GROUP BY ProjectId, TraceId
"""

NOW_SQL = "SELECT toUnixTimestamp64Nano(now64(6))"

# The text a run's steps streamed (the client helper's chunks), in order;
# `since` (an arrival time) skips what a live client already has.
CHUNKS_SQL = """
SELECT SpanId, Channel, Body, toUnixTimestamp64Nano(Timestamp) AS at, ChunkIndex,
    toUnixTimestamp64Nano(IngestedAt)
FROM logs FINAL
PREWHERE ProjectId = {project:String} AND TraceId = {trace:String}
WHERE Channel != '' AND IngestedAt > fromUnixTimestamp64Nano({since:Int64})
ORDER BY at, ChunkIndex
"""

# Log records linked to one step: its events besides the span's own, and its
# chunks in stream order.
STEP_LOGS_SQL = """
SELECT *, toUnixTimestamp64Nano(Timestamp) AS at
FROM logs FINAL
PREWHERE ProjectId = {project:String} AND TraceId = {trace:String} AND SpanId = {step:String}
ORDER BY ChunkIndex, at
LIMIT 10000
"""

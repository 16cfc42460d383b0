"""All SQL of the query API, in one place, with bound parameters only.

Nothing a client sends is ever formatted into these strings: values travel
as ClickHouse query parameters (`{name:Type}`), and the only fragments
joined in are the fixed ones below, chosen by which filters are present.
Reads of `spans` use FINAL: a retried export wrote some spans twice, and
until ClickHouse merges them only FINAL hides the copy. A step can also
have a second row, its pending span (`Pending = 1`): reads count it once
and prefer the span itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracehouse.schema.rows import PREVIEW_CHARS

# The top-level run of each trace, folded from the runs table. Its status
# is decided here, so that lists, counts and headers all agree:
# - the root span has not arrived: `failed` if a step under the root's id
#   failed (some frameworks never send a run's span when it raises),
#   otherwise `running`;
# - a root that is neither agent nor workflow (a wrapper, an HTTP handler)
#   that completed while an agent directly under it failed: `failed`;
# - otherwise what happened to the root span.
_RUN_KEY_COLUMNS = """
    TraceId AS trace_id,
    if(root.seen > 0, root.span_id, topmost.2) AS run_id,
    if(root.seen > 0, root.name, topmost.3) AS name,
    if(root.seen > 0, root.kind, 'span') AS kind,
    multiIf(
        root.seen = 0, if(has(FailedParents, topmost.2), 'failed', 'running'),
        root.status = 'completed' AND root.kind NOT IN ('agent', 'workflow')
            AND has(FailedAgentParents, root.span_id), 'failed',
        root.status
    ) AS status,
    if(root.trigger != '', root.trigger, if(root.link_span != '', 'subagent', 'unknown'))
        AS trigger,
    root.version AS version,
    root.session_id AS session_id,
    toUnixTimestamp64Nano(Start) AS started_ns,
    root.link_span AS link_span,
    root.link_span != '' AS is_sub_run,
    root.seen > 0 AS root_seen"""

# FINAL folds a trace's partial rows as a GROUP BY would, and skips the work
# for parts that merges already folded: far cheaper on big tables.
_RUNS_FROM = """
FROM (SELECT *, RootKey AS root, Topmost AS topmost FROM runs FINAL
      WHERE ProjectId = {project:String} /*scope*/)
"""

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
{_RUNS_FROM.replace("/*scope*/", "AND TraceId IN {traces:Array(String)}")}
"""

# What a run header needs from every step of its trace.
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
FROM spans FINAL
WHERE ProjectId = {project:String} AND TraceId IN {traces:Array(String)}
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
WHERE ProjectId = {{project:String}} AND TraceId = {{trace:String}}
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
_TOP_LEVEL = f"""
SELECT trace_id, run_id, name, status, trigger, version, session_id, started_ns, is_sub_run,
    0 AS nested
FROM (SELECT {_RUN_KEY_COLUMNS} {_RUNS_FROM.replace("/*scope*/", "")})
"""

_NESTED = """
SELECT TraceId AS trace_id, SpanId AS run_id, StepName AS name, StepStatus AS status,
    if(Trigger != '', Trigger, 'subagent') AS trigger, Version AS version,
    SessionId AS session_id, toUnixTimestamp64Nano(Timestamp) AS started_ns, 1 AS is_sub_run,
    1 AS nested
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


def _candidates(f: RunFilter) -> str:
    return f"({_TOP_LEVEL} UNION ALL {_NESTED})" if f.include_subruns else f"({_TOP_LEVEL})"


def list_runs(
    f: RunFilter, cursor: tuple[int, str] | None, limit: int
) -> tuple[str, dict[str, Any]]:
    """Newest first: (trace_id, run_id, started_ns, nested) of one page, and one more."""
    clauses, params = _where(f, with_status=True)
    if cursor is not None:
        # Keyset paging: runs that arrive meanwhile sort before the cursor,
        # so paging on never repeats or skips one.
        clauses.append("(started_ns, run_id) < ({cursor_start:Int64}, {cursor_id:String})")
        params |= {"cursor_start": cursor[0], "cursor_id": cursor[1]}
    params["limit"] = limit + 1
    where = " AND ".join(clauses) or "1"
    sql = (
        f"SELECT trace_id, run_id, started_ns, nested FROM {_candidates(f)} WHERE {where} "
        "ORDER BY started_ns DESC, run_id DESC LIMIT {limit:UInt32}"
    )
    return sql, params


def count_runs(f: RunFilter) -> tuple[str, dict[str, Any]]:
    """Runs per status under every filter but the status one."""
    clauses, params = _where(f, with_status=False)
    where = " AND ".join(clauses) or "1"
    return f"SELECT status, count() FROM {_candidates(f)} WHERE {where} GROUP BY status", params


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
WHERE ProjectId = {project:String} AND TraceId = {trace:String} AND SpanId = {step:String}
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
WHERE ProjectId = {project:String} AND TraceId = {trace:String} AND Channel != ''
    AND IngestedAt > fromUnixTimestamp64Nano({since:Int64})
ORDER BY at, ChunkIndex
"""

# Log records linked to one step: its events besides the span's own, and its
# chunks in stream order.
STEP_LOGS_SQL = """
SELECT *, toUnixTimestamp64Nano(Timestamp) AS at
FROM logs FINAL
WHERE ProjectId = {project:String} AND TraceId = {trace:String} AND SpanId = {step:String}
ORDER BY ChunkIndex, at
LIMIT 10000
"""

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
from typing import Any, Literal

from tracehouse.schema.rows import PREVIEW_CHARS

# Settings of every read. ClickHouse 26's top-K filter (on by default) turns
# a list's `ORDER BY started_ns DESC LIMIT n` into a filter on the start,
# and its conditions are then no longer moved to PREWHERE: a filter that
# matches few runs read every column of the whole run list (249 ms at a
# million runs, against 24 without it; pages that fill at once are equal).
#
# A read of fewer than 163,840 rows runs on one thread by default: a big
# trace's 100,000 spans were read on one core of two. From 16,384 rows,
# on both: its shape 25 -> 20 ms, its first level's rows 28 -> 20.
READ_SETTINGS = {
    "use_top_k_dynamic_filtering": 0,
    "merge_tree_min_rows_for_concurrent_read": 16_384,
    "merge_tree_min_bytes_for_concurrent_read": 1 << 20,
}

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
# for parts that merges already folded: far cheaper over a whole big table.
_RUNS_FROM = """
FROM (SELECT *, RootKey AS root, Topmost AS topmost FROM runs FINAL
      WHERE ProjectId = {project:String} /*scope*/)
"""

# Some traces' partial rows folded with GROUP BY, as the columns of `runs`
# (`/*traces*/`: a condition on ProjectId and TraceId). PREWHERE on the
# sorting key reads their granules only, where FINAL would merge every part
# they might be in (a page of 50 headers at a million runs: ~120 against
# ~200 ms).
_FOLDED = """
(SELECT ProjectId, TraceId, run_start AS Start, last_seen AS LastSeen, root, topmost,
    failed AS FailedParents, failed_agents AS FailedAgentParents, detail AS RootDetail,
    service AS Service, first_llm AS FirstLlm, last_llm AS LastLlm
FROM (
    SELECT ProjectId, TraceId, min(Start) AS run_start, max(LastSeen) AS last_seen,
        max(RootKey) AS root, min(Topmost) AS topmost,
        groupUniqArrayArray(FailedParents) AS failed,
        groupUniqArrayArray(FailedAgentParents) AS failed_agents,
        max(RootDetail) AS detail, max(Service) AS service,
        min(FirstLlm) AS first_llm, max(LastLlm) AS last_llm
    FROM runs
    PREWHERE /*traces*/
    GROUP BY ProjectId, TraceId
))"""

# What a run header says of a trace's folded partial rows, but for what it
# sums over every step (TRACE_TOTALS_SQL). The run list keeps these columns.
_HEADER_COLUMNS = f"""{_RUN_KEY_COLUMNS},
    Service AS service,
    if(root.seen > 0, toUnixTimestamp64Nano(RootDetail.end), NULL) AS ended_ns,
    (RootDetail.input_tokens, RootDetail.output_tokens, RootDetail.total_tokens) AS own_tokens,
    if(RootDetail.model != '', RootDetail.model, LastLlm.4) AS model,
    (RootDetail.error_type, RootDetail.error_message) AS error,
    if(RootDetail.input != '', RootDetail.input, FirstLlm.3) AS input_preview,
    if(RootDetail.output != '', RootDetail.output, LastLlm.3) AS output_preview,
    RootDetail.link_trace AS link_trace,
    toUnixTimestamp64Nano(LastSeen) AS last_seen_ns"""
HEADER_NAMES = (
    "trace_id", "run_id", "name", "kind", "status", "trigger", "version", "session_id",
    "started_ns", "link_span", "is_sub_run", "root_seen", "service", "ended_ns", "own_tokens",
    "model", "error", "input_preview", "output_preview", "link_trace", "last_seen_ns",
)  # fmt: skip

# Headers of the top-level runs of the given traces.
_OF_TRACES = "ProjectId = {project:String} AND TraceId IN {traces:Array(String)}"
RUNS_SQL = f"SELECT {_HEADER_COLUMNS} FROM {_FOLDED.replace('/*traces*/', _OF_TRACES)}"

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
WHERE ProjectId = {{project:String}} AND TraceId = {{trace:String}}
"""

# A trace's shape: what a level of its tree needs of every step, as numbers,
# for levels.py, which keeps a step's span over its pending span. Ids are
# their 8 bytes read as one integer (a missing parent: 0). Its yes-or-no
# columns travel as the bits of one byte (levels.FLAGS), a third less to
# decode than a column each (~15 ms at 100,000 steps).
TRACE_SHAPE_SQL = """
SELECT
    reinterpretAsUInt64(unhex(SpanId)) AS id,
    reinterpretAsUInt64(unhex(ParentSpanId)) AS parent,
    toUInt8((length(SpanId) != 16 OR length(ParentSpanId) NOT IN (0, 16))
        + 2 * (StepKind = 'llm') + 4 * (StepKind = 'node') + 8 * (StepStatus = 'running')
        + 16 * (StepStatus IN ('failed', 'cancelled')) + 32 * Pending + 64 * isNotNull(CostUsd))
        AS flags,
    toUnixTimestamp64Nano(Timestamp) AS start,
    toInt64(toUnixTimestamp64Nano(Timestamp) + Duration) AS end,
    InputTokens AS input_tokens, OutputTokens AS output_tokens, TotalTokens AS total_tokens,
    ifNull(CostUsd, 0) AS cost
FROM spans FINAL
WHERE ProjectId = {project:String} AND TraceId = {trace:String}
"""

# Some steps of a trace, as TRACE_ROWS_SQL reads them.
TRACE_STEPS_SQL = TRACE_ROWS_SQL + " AND SpanId IN {steps:Array(String)}"

# What changes whenever anything of a trace arrives (or merges fold it): its
# rows in `spans` and in `runs`, and its newest arrival. A span's part and
# its runs part become visible apart, and concurrent inserts out of their
# stamps' order, so each count is there as well as the newest arrival. Both
# counts are read off the primary key (~6 ms each at 20M spans), where the
# header's totals read every span of the trace (~80 ms at 100,000 spans).
TRACE_VERSION_SQL = """
SELECT
    (SELECT count() FROM spans WHERE ProjectId = {project:String} AND TraceId = {trace:String}),
    (SELECT (count(), toUnixTimestamp64Nano(max(LastSeen))) FROM runs
     WHERE ProjectId = {project:String} AND TraceId = {trace:String})
"""

# Read once as the query API starts, so that its first requests do not wait
# for what ClickHouse loads on first use: each table's primary key (loaded
# lazily, ~16 ms at 20M spans) and its marks (where each granule of each
# column starts, ~10 ms more). The first read of a 100,000-step tree's first
# level took 148-162 ms in a new process, 122-124 after these (126-135
# after the keys alone). Warming is best effort: a server that refuses
# SYSTEM statements is read cold.
WARM_SQL = tuple(
    statement
    for table, key in (("spans", "TraceId"), ("runs", "TraceId"), ("run_list", "run_id"))
    for statement in (
        f"SELECT count() FROM {table} WHERE ProjectId = '' AND {key} = ''",
        f"SYSTEM PREWARM MARK CACHE {table}",
    )
)

TRACE_EXISTS_SQL = """
SELECT 1 FROM runs WHERE ProjectId = {project:String} AND TraceId = {trace:String} LIMIT 1
"""

# A top-level run's trace, off the run list's index of run ids (~4 ms at a
# million runs, where finding a span among 20M takes ~35); FIND_TRACE_SQL
# for any other step.
FIND_LISTED_SQL = """
SELECT trace_id FROM run_list WHERE ProjectId = {project:String} AND run_id = {id:String} LIMIT 1
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
# Top-level runs are read from `run_list`, one narrow row per run that the
# query API's refresher keeps (run_list.py), except the runs that moved since
# its last complete refresh began (its mark, less the store's `margin` ns for
# inserts that had stamped their rows and were not yet visible): those are
# folded fresh from `runs` and stand in for their rows (all of them before a
# first refresh). So a page reads a granule of the run list, and its counts
# one narrow row per run.
#
# The refresher's marks are rows of project '': `last_seen_ns`, when a
# complete refresh began reading `runs`; `folded_at`, when it was done. The
# store reads them once per list and binds them (`mark`, `done`), so the
# page and its counts read the run list as of one moment: rows folded after
# `done` belong to a refresh still under way (or one that died) and are
# left out, and their runs read fresh.
MARKS_SQL = """
SELECT max(last_seen_ns), toUnixTimestamp64Nano(max(folded_at)) FROM run_list
WHERE ProjectId = ''
"""

_FRESH_TRACES = """
SELECT TraceId FROM runs
WHERE ProjectId = {project:String}
    AND LastSeen >= fromUnixTimestamp64Nano(greatest(0, {mark:Int64} - {margin:Int64}))
UNION DISTINCT
SELECT trace_id AS TraceId FROM run_list
WHERE ProjectId = {project:String} AND folded_at > fromUnixTimestamp64Nano({done:Int64})
"""

# The store reads the fresh runs' traces first and binds them as `fresh`: a
# set known before the query lets the primary key of `runs` and the index of
# the run list find them (a subquery's set is built too late for that). Past
# this many (before a first refresh, say) the queries find them themselves.
FRESH_INLINE_MAX = 10_000
FRESH_TRACES_SQL = f"SELECT TraceId FROM ({_FRESH_TRACES}) LIMIT {FRESH_INLINE_MAX + 1}"

# A run of a list: its header's columns, and whether it is nested.
_LIST_COLUMNS = ", ".join(HEADER_NAMES) + ", nested"

_LISTED = f"""
SELECT {", ".join(HEADER_NAMES)}, 0 AS nested
FROM run_list
WHERE ProjectId = {{project:String}} AND folded_at <= fromUnixTimestamp64Nano({{done:Int64}})"""
_LISTED_RUNS = f"{_LISTED} AND trace_id NOT IN /*fresh*/"
# The run list's rows of the runs read fresh (found by its trace id index).
_LISTED_MOVED = f"{_LISTED} AND trace_id IN /*fresh*/"

_FRESH_RUNS = f"""
SELECT {_HEADER_COLUMNS}, 0 AS nested
FROM {_FOLDED.replace("/*traces*/", "ProjectId = {project:String} AND TraceId IN /*fresh*/")}
"""

# Agent and workflow steps below a top-level run; their headers come from
# their trace's tree (runs.py), so here they need only what a list filters
# and sorts on.
_NESTED = """
SELECT TraceId AS trace_id, SpanId AS run_id, StepName AS name, StepKind AS kind,
    StepStatus AS status, if(Trigger != '', Trigger, 'subagent') AS trigger, Version AS version,
    SessionId AS session_id, toUnixTimestamp64Nano(Timestamp) AS started_ns, '' AS link_span,
    1 AS is_sub_run, 1 AS root_seen, ServiceName AS service, NULL AS ended_ns,
    (toUInt64(0), toUInt64(0), toUInt64(0)) AS own_tokens, '' AS model, ('', '') AS error,
    '' AS input_preview, '' AS output_preview, '' AS link_trace, 0 AS last_seen_ns, 1 AS nested
FROM spans FINAL
WHERE ProjectId = {project:String} AND StepKind IN ('agent', 'workflow') AND ParentSpanId != ''
ORDER BY Pending LIMIT 1 BY TraceId, SpanId
"""

# The refresher's statements, over every project. Runs that moved since
# `since` are folded again and written with the moment they were read
# (`folded_at`); the rows they replace are deleted (and all marks but the
# newest); then the mark of this refresh is written. A list reads fresh
# every run that moved after the newest mark and every run with a row
# folded after it was written, so it never sees a run twice, and a
# refresher stopped half way leaves rows the next one deletes (through a
# patch part where the table allows it: ddl.PATCH_SETTINGS). `/*moved*/`:
# the (project, trace) pairs bound, or found again.
MOVED_SQL = f"""
SELECT DISTINCT ProjectId, TraceId FROM runs
WHERE LastSeen >= fromUnixTimestamp64Nano({{since:Int64}})
LIMIT {FRESH_INLINE_MAX + 1}
"""
_MOVED = (
    "SELECT DISTINCT ProjectId, TraceId FROM runs "
    "WHERE LastSeen >= fromUnixTimestamp64Nano({since:Int64})"
)

_REFRESH = (
    f"""
INSERT INTO run_list (ProjectId, {", ".join(HEADER_NAMES)}, last_seen, folded_at)
SELECT ProjectId, {", ".join(HEADER_NAMES)}, LastSeen, now64(6)
FROM (
    SELECT ProjectId, {_HEADER_COLUMNS}, LastSeen
    FROM {_FOLDED.replace("/*traces*/", "(ProjectId, TraceId) IN /*moved*/")}
)
""",
    """
DELETE FROM run_list
WHERE (ProjectId = ''
        AND folded_at < (SELECT max(folded_at) FROM run_list WHERE ProjectId = ''))
    OR ((ProjectId, trace_id) IN /*moved*/ AND (ProjectId, trace_id, folded_at) NOT IN (
        SELECT ProjectId, trace_id, max(folded_at) FROM run_list
        WHERE (ProjectId, trace_id) IN /*moved*/
        GROUP BY ProjectId, trace_id))
SETTINGS lightweight_delete_mode = 'lightweight_update'
""",
    # `last_seen` too: the retention's TTL reads it.
    "INSERT INTO run_list (ProjectId, last_seen_ns, last_seen, folded_at)"
    " SELECT '', {mark:Int64}, now64(6), now64(6)",
)

# The refreshes' deletes written into the run list's parts. Each delete is a
# patch part, and every read joins the parts older than a patch to it until
# a merge applies it; the run list's largest parts are never merged again.
# After 17,500 runs had moved, six patches masking 22,586 rows made the counts
# take 25 ms and not 11, the filtered page 48 and not 27. A mutation: it runs
# in the background (~1 s at a million runs) and rewrites only the row mask.
APPLY_DELETES_SQL = "ALTER TABLE run_list APPLY PATCHES"

# Runs whose row in the run list is not their latest fold: moved in `runs`
# since `since`, with a newest arrival their row does not have. What a
# refresh can miss (an insert seen later than its stamp and the margin, a
# run healed at start with its old stamps) is found here and folded again.
STALE_SQL = f"""
SELECT ProjectId, TraceId FROM (
    SELECT ProjectId, TraceId, toUnixTimestamp64Nano(max(LastSeen)) AS seen FROM runs
    WHERE LastSeen >= fromUnixTimestamp64Nano({{since:Int64}})
    GROUP BY ProjectId, TraceId)
WHERE (ProjectId, TraceId, seen) NOT IN (
    SELECT ProjectId, trace_id, last_seen_ns FROM run_list
    WHERE last_seen >= fromUnixTimestamp64Nano({{since:Int64}}))
LIMIT {FRESH_INLINE_MAX}
"""


def refresh_run_list(moved_bound: bool) -> list[str]:
    """The refresh's statements; `moved_bound`: the caller binds `moved`, from MOVED_SQL."""
    moved = "{moved:Array(Tuple(String, String))}" if moved_bound else f"({_MOVED})"
    return [statement.replace("/*moved*/", moved) for statement in _REFRESH]


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


# The runs that moved since the run list's mark: none (the list reads the
# run list alone), bound by the caller as `fresh` (FRESH_TRACES_SQL), or
# found by the queries themselves (too many to bind).
Fresh = Literal["none", "bound", "found"]


def _fresh_traces(fresh: Fresh) -> str:
    return "{fresh:Array(String)}" if fresh == "bound" else f"({_FRESH_TRACES})"


def _sources(f: RunFilter, fresh: Fresh) -> list[str]:
    """Where the runs of a list come from; the run list's rows first."""
    if fresh == "none":
        sources = [_LISTED]
    else:
        traces = _fresh_traces(fresh)
        sources = [source.replace("/*fresh*/", traces) for source in (_LISTED_RUNS, _FRESH_RUNS)]
    return [*sources, _NESTED] if f.include_subruns else sources


def list_runs(
    f: RunFilter, cursor: tuple[int, str] | None, limit: int, fresh: Fresh = "found"
) -> tuple[str, dict[str, Any]]:
    """Newest first, one page and one more: the header columns (HEADER_NAMES), and `nested`."""
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
    # Each source keeps its own first page (the run list's is a reverse read
    # of its sorting key), then the pages are merged.
    pages = " UNION ALL ".join(
        f"(SELECT {_LIST_COLUMNS} FROM ({source}) WHERE {where} {order})"
        for source in _sources(f, fresh)
    )
    sql = f"SELECT {_LIST_COLUMNS} FROM ({pages}) {order}"
    return sql, params


def count_runs(f: RunFilter, fresh: Fresh = "found") -> tuple[str, dict[str, Any]]:
    """Runs per status under every filter but the status one.

    The whole run list is counted, then its rows of runs that moved are
    taken off again and those runs counted fresh: cheaper than asking each
    of a million rows whether its run moved.
    """
    clauses, params = _where(f, with_status=False)
    where = " AND ".join(clauses) or "1"
    signed = [(_LISTED, ""), *[(source, "") for source in _sources(f, fresh)[1:]]]
    if fresh != "none":
        signed.append((_LISTED_MOVED.replace("/*fresh*/", _fresh_traces(fresh)), "-"))
    union = " UNION ALL ".join(
        f"(SELECT status, {sign}toInt64(count()) AS n FROM ({source}) WHERE {where} "
        "GROUP BY status)"
        for source, sign in signed
    )
    return f"SELECT status, sum(n) FROM ({union}) GROUP BY status", params


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

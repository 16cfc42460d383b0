"""All SQL of the query API, with bound parameters only.

The one place the query API meets ClickHouse; its errors leave as
`StorageError`. Calls block (chDB and the HTTP client both do), so routes
run them on worker threads. Reads of `spans` use FINAL: a retried export
wrote some spans twice, and until ClickHouse merges them only FINAL hides
the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.query_api.assembly import Error, RunHeader, SpanRow, Tokens
from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.migrations import MIGRATIONS, applied_versions
from tracehouse.schema.rows import PREVIEW_CHARS

# The top-level run of each trace, folded from the runs table. Its status
# is decided here, so that lists, counts and headers all agree:
# - the root span has not arrived: `failed` if a step under the root's id
#   failed (some frameworks never send a run's span when it raises),
#   otherwise `running`;
# - a root that is neither agent nor workflow (a wrapper, an HTTP handler)
#   that completed while an agent directly under it failed: `failed`;
# - otherwise what happened to the root span.
RUNS_SQL = """
SELECT
    TraceId AS trace_id,
    if(root.seen > 0, root.span_id, topmost.2) AS run_id,
    if(root.seen > 0, root.name, topmost.3) AS name,
    if(root.seen > 0, root.kind, 'span') AS kind,
    multiIf(
        root.seen = 0, if(has(failed_parents, topmost.2), 'failed', 'running'),
        root.status = 'completed' AND root.kind NOT IN ('agent', 'workflow')
            AND has(failed_agent_parents, root.span_id), 'failed',
        root.status
    ) AS status,
    if(root.trigger != '', root.trigger, if(root.link_span != '', 'subagent', 'unknown'))
        AS trigger,
    root.version AS version,
    service,
    root.session_id AS session_id,
    toUnixTimestamp64Nano(started) AS started_ns,
    if(root.seen > 0, toUnixTimestamp64Nano(root.end), NULL) AS ended_ns,
    (root.input_tokens, root.output_tokens, root.total_tokens) AS own_tokens,
    if(root.model != '', root.model, last_llm.4) AS model,
    (root.error_type, root.error_message) AS error,
    if(root.input != '', root.input, first_llm.3) AS input_preview,
    if(root.output != '', root.output, last_llm.3) AS output_preview,
    root.link_trace AS link_trace,
    root.link_span AS link_span,
    root.seen > 0 AS root_seen
FROM (
    SELECT
        TraceId,
        min(Start) AS started,
        max(LastSeen) AS last_seen,
        min(Topmost) AS topmost,
        max(Root) AS root,
        max(Service) AS service,
        groupUniqArrayArray(FailedParents) AS failed_parents,
        groupUniqArrayArray(FailedAgentParents) AS failed_agent_parents,
        min(FirstLlm) AS first_llm,
        max(LastLlm) AS last_llm
    FROM runs
    WHERE ProjectId = {project:String} AND TraceId IN {traces:Array(String)}
    GROUP BY TraceId
)
"""

# What a run header needs from every step of its trace.
TRACE_TOTALS_SQL = """
SELECT
    TraceId,
    count() AS spans,
    countIf(StepKind = 'llm') AS llm_steps,
    sumIf(InputTokens, StepKind = 'llm') AS input_tokens,
    sumIf(OutputTokens, StepKind = 'llm') AS output_tokens,
    sumIf(TotalTokens, StepKind = 'llm') AS total_tokens,
    sumOrNull(CostUsd) AS cost_usd,
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
    substringUTF8(Output, 1, {PREVIEW_CHARS}), Trigger, Version, SessionId, ServiceName
FROM spans FINAL
WHERE ProjectId = {{project:String}} AND TraceId = {{trace:String}}
"""

FIND_TRACE_SQL = """
SELECT TraceId FROM spans
WHERE ProjectId = {project:String} AND (SpanId = {id:String} OR ParentSpanId = {id:String})
LIMIT 1
"""


class Store:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        try:
            return self._client.query(sql, parameters=parameters).result_rows
        except (ClickHouseError, OSError) as exc:
            raise StorageError(f"ClickHouse query failed: {exc}") from exc

    def ready(self) -> bool:
        """ClickHouse answers and every migration this build knows is applied."""
        try:
            done = applied_versions(self._client)
        except (ClickHouseError, OSError) as exc:
            raise StorageError(f"ClickHouse is not ready: {exc}") from exc
        return all(m.version in done for m in MIGRATIONS)

    def find_trace(self, project: str, run_id: str) -> str | None:
        """The trace holding a run (by its run id, or by trace id for a top-level run)."""
        if len(run_id) == 32:
            return run_id if self.top_runs(project, [run_id]) else None
        rows = self._rows(FIND_TRACE_SQL, {"project": project, "id": run_id})
        return str(rows[0][0]) if rows else None

    def top_runs(self, project: str, trace_ids: Sequence[str]) -> dict[str, RunHeader]:
        """The top-level run of each trace, by trace id (absent: nothing stored)."""
        parameters = {"project": project, "traces": list(trace_ids)}
        totals = {row[0]: row for row in self._rows(TRACE_TOTALS_SQL, parameters)}
        return {
            row[0]: _header(row, totals.get(row[0])) for row in self._rows(RUNS_SQL, parameters)
        }

    def trace_rows(self, project: str, trace_id: str) -> list[SpanRow]:
        rows = self._rows(TRACE_ROWS_SQL, {"project": project, "trace": trace_id})
        return [_span_row(row) for row in rows]


def _header(run: Sequence[Any], totals: Sequence[Any] | None) -> RunHeader:
    (trace_id, run_id, name, kind, status, trigger, version, service, session_id, started_ns,
     ended_ns, own_tokens, model, error, input_preview, output_preview, link_trace,
     link_span, root_seen) = run  # fmt: skip
    _, spans, llm_steps, input_tokens, output_tokens, total_tokens, cost, first_error = totals or (
        "", 0, 0, 0, 0, 0, None, ("", "")
    )  # fmt: skip
    tokens = Tokens(input_tokens, output_tokens, total_tokens) if llm_steps else Tokens(*own_tokens)
    failed = status in ("failed", "cancelled")
    error_type, error_message = error if any(error) else first_error
    return RunHeader(
        run_id=run_id,
        trace_id=trace_id,
        parent_run_id=None,
        name=name,
        kind=kind,
        status=status,
        trigger=trigger,
        version=version,
        service=service,
        session_id=session_id,
        started_ns=started_ns,
        ended_ns=ended_ns if status != "running" else None,
        step_count=max(spans - (1 if root_seen else 0), 0),
        tokens=tokens,
        cost_usd=cost,
        model=model,
        error=Error(error_type, error_message) if failed else None,
        input_preview=input_preview,
        output_preview=output_preview,
        parent_link=(link_trace, link_span) if link_span else None,
    )


def _span_row(row: Sequence[Any]) -> SpanRow:
    (span_id, parent_id, kind, name, status, start_ns, duration_ns, index, model, input_tokens,
     output_tokens, total_tokens, cost, error_type, error_message, input_preview,
     output_preview, trigger, version, session_id, service) = row  # fmt: skip
    return SpanRow(
        span_id=span_id,
        parent_id=parent_id,
        kind=kind,
        name=name,
        status=status,
        start_ns=start_ns,
        duration_ns=duration_ns,
        index=index,
        model=model,
        tokens=Tokens(input_tokens, output_tokens, total_tokens),
        cost_usd=cost,
        error_type=error_type,
        error_message=error_message,
        input_preview=input_preview,
        output_preview=output_preview,
        trigger=trigger,
        version=version,
        session_id=session_id,
        service=service,
    )

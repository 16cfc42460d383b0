"""The query API's storage: runs the SQL of `sql.py` and turns rows into values.

The one place the query API meets ClickHouse; its errors leave as
`StorageError`. Calls block (chDB and the HTTP client both do), so routes
run them on worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.query import QueryResult

from tracehouse.query_api import sql
from tracehouse.query_api.assembly import Chunk, Error, RunHeader, SpanRow, Tokens
from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.migrations import MIGRATIONS, applied_versions


class QueryTimeout(StorageError):
    """ClickHouse stopped a query at the request timeout (`max_execution_time`)."""


class Store:
    def __init__(self, client: Client, stale_after_s: float = 1800.0) -> None:
        self._client = client
        self._stale_after_ns = int(stale_after_s * 1e9)

    def _query(self, sql: str, parameters: dict[str, Any]) -> QueryResult:
        """The one place a query runs: ClickHouse's errors leave as StorageError."""
        try:
            return self._client.query(sql, parameters=parameters)
        except (ClickHouseError, OSError) as exc:
            if "TIMEOUT_EXCEEDED" in str(exc):
                raise QueryTimeout("the query took longer than the request timeout") from exc
            raise StorageError(f"ClickHouse query failed: {exc}") from exc

    def _rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self._query(sql, parameters).result_rows

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
            rows = self._rows(sql.TRACE_EXISTS_SQL, {"project": project, "trace": run_id})
            return run_id if rows else None
        rows = self._rows(sql.FIND_TRACE_SQL, {"project": project, "id": run_id})
        return str(rows[0][0]) if rows else None

    def top_runs(self, project: str, trace_ids: Sequence[str]) -> dict[str, RunHeader]:
        """The top-level run of each trace, by trace id (absent: nothing stored)."""
        parameters = {"project": project, "traces": list(trace_ids)}
        totals = {row[0]: row for row in self._rows(sql.TRACE_TOTALS_SQL, parameters)}
        stale_before = time.time_ns() - self._stale_after_ns
        return {
            row[0]: _header(row, totals.get(row[0]), stale_before)
            for row in self._rows(sql.RUNS_SQL, parameters)
        }

    def list_runs(
        self, project: str, f: sql.RunFilter, cursor: tuple[int, str] | None, limit: int
    ) -> list[tuple[str, str, int, bool]]:
        query, parameters = sql.list_runs(f, cursor, limit)
        rows = self._rows(query, parameters | {"project": project})
        return [(str(t), str(r), int(s), bool(sub)) for t, r, s, sub in rows]

    def count_runs(self, project: str, f: sql.RunFilter) -> dict[str, int]:
        query, parameters = sql.count_runs(f)
        return {str(s): int(n) for s, n in self._rows(query, parameters | {"project": project})}

    def stats(
        self, project: str, f: sql.RunFilter, bucket_seconds: int
    ) -> dict[str, Sequence[Sequence[Any]]]:
        return {
            part: self._rows(query, parameters | {"project": project})
            for part, (query, parameters) in sql.stats(f, bucket_seconds).items()
        }

    def step(self, project: str, trace_id: str, step_id: str) -> dict[str, Any] | None:
        """Everything stored of one span, by column name."""
        parameters = {"project": project, "trace": trace_id, "step": step_id}
        return next(iter(self._query(sql.STEP_SQL, parameters).named_results()), None)

    def now_ns(self) -> int:
        """ClickHouse's clock, which stamps IngestedAt."""
        return int(self._rows(sql.NOW_SQL, {})[0][0])

    def arrived_since(self, since_ns: int) -> list[tuple[str, str, int]]:
        """(project, trace, newest arrival) of every run with rows newer than `since_ns`."""
        rows = self._rows(sql.ARRIVED_SQL, {"since": since_ns})
        return [(str(p), str(t), int(at)) for p, t, at in rows]

    def chunks(self, project: str, trace_id: str, since_ns: int = 0) -> list[Chunk]:
        """Text streamed by the trace's steps, in order (those that arrived after `since_ns`)."""
        parameters = {"project": project, "trace": trace_id, "since": since_ns}
        return [Chunk(*row) for row in self._rows(sql.CHUNKS_SQL, parameters)]

    def step_logs(self, project: str, trace_id: str, step_id: str) -> list[dict[str, Any]]:
        """Log records linked to one step, by column name, in time order."""
        parameters = {"project": project, "trace": trace_id, "step": step_id}
        return list(self._query(sql.STEP_LOGS_SQL, parameters).named_results())

    def trace_rows(self, project: str, trace_id: str) -> list[SpanRow]:
        """The trace's steps, each once: a pending span only until its span arrives."""
        rows = self._rows(sql.TRACE_ROWS_SQL, {"project": project, "trace": trace_id})
        ended = {row[0] for row in rows if not row[-1]}
        return [_span_row(row) for row in rows if not row[-1] or row[0] not in ended]


def _header(run: Sequence[Any], totals: Sequence[Any] | None, stale_before: int) -> RunHeader:
    (trace_id, run_id, name, kind, status, trigger, version, session_id, started_ns, link_span,
     _is_sub_run, root_seen, service, ended_ns, own_tokens, model, error, input_preview,
     output_preview, link_trace, last_seen_ns) = run  # fmt: skip
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
        stale=status == "running" and last_seen_ns < stale_before,
        last_seen_ns=last_seen_ns,
    )


def _span_row(row: Sequence[Any]) -> SpanRow:
    (span_id, parent_id, kind, name, status, start_ns, duration_ns, index, model, input_tokens,
     output_tokens, total_tokens, cost, error_type, error_message, input_preview,
     output_preview, trigger, version, session_id, service, warnings, _pending) = row  # fmt: skip
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
        warnings=tuple(warnings),
    )

"""The query API's storage: runs the SQL of `sql.py` and turns rows into values.

The one place the query API meets ClickHouse; its errors leave as
`StorageError`. Calls block (chDB and the HTTP client both do), so routes
run them on worker threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.query import QueryResult

from tracehouse.query_api import sql
from tracehouse.query_api.assembly import Chunk, Error, RunHeader, SpanRow, Tokens
from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.migrations import MIGRATIONS, applied_versions

log = logging.getLogger(__name__)


class RunKey(NamedTuple):
    """A run of a list: where it is, where it sorts, and a top-level run's header."""

    trace_id: str
    run_id: str
    started_ns: int
    # None for an agent or workflow step below its trace's top-level run,
    # whose header its trace's tree gives.
    header: RunHeader | None


class RunRow(NamedTuple):
    """A top-level run as sql.RUNS_SQL folds it: its header but for its totals."""

    run_id: str
    columns: Sequence[Any]  # sql.HEADER_NAMES


# Run ids whose trace is kept (~200 bytes each).
_TRACES_KEPT = 100_000


class QueryTimeout(StorageError):
    """ClickHouse stopped a query at the request timeout (`max_execution_time`)."""


class Store:
    def __init__(
        self,
        client: Client | Sequence[Client],
        stale_after_s: float = 1800.0,
        run_list_margin_s: float = 5.0,
    ) -> None:
        # Each query takes a client of its own, waiting while all are busy.
        self._clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        for each in client if isinstance(client, Sequence) else [client]:
            self._clients.put(each)
        self._stale_after_ns = int(stale_after_s * 1e9)
        # How long before a refresh of the run list read `runs` an insert may
        # have stamped its rows (`IngestedAt`) and still not be visible: runs
        # that moved since are read fresh, and folded again by the next
        # refresh. An insert is visible well under a second after its stamp;
        # five seconds, as the live tail allows (feed.py), cover a slow one.
        self.run_list_margin_ns = int(run_list_margin_s * 1e9)
        # Where runs were found (find_trace), by (project, run id): a run's
        # tree and header look it up on every request (~40 ms at 20M spans).
        self._traces: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._traces_lock = threading.Lock()

    @contextmanager
    def _client(self) -> Iterator[Client]:
        """A client of the store's own for one query, given back after it."""
        client = self._clients.get()
        try:
            yield client
        finally:
            self._clients.put(client)

    def _query(self, query: str, parameters: dict[str, Any]) -> QueryResult:
        with self._client() as client, _storage_errors():
            return client.query(query, parameters=parameters, settings=sql.READ_SETTINGS)

    def _command(self, statement: str, parameters: dict[str, Any]) -> None:
        """A statement that answers no rows (an insert from a select, a delete)."""
        with self._client() as client, _storage_errors():
            client.command(statement, parameters=parameters)

    def _rows(self, query: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self._query(query, parameters).result_rows

    def ready(self) -> bool:
        """ClickHouse answers and every migration this build knows is applied."""
        with self._client() as client:
            try:
                done = applied_versions(client)
            except (ClickHouseError, OSError) as exc:
                raise StorageError(f"ClickHouse is not ready: {exc}") from exc
        return all(m.version in done for m in MIGRATIONS)

    def warm(self) -> None:
        """Load what a first read would wait for (sql.WARM_SQL), as far as ClickHouse lets."""
        with self._client() as client:
            for statement in sql.WARM_SQL:
                try:
                    client.command(statement)
                except ClickHouseError as exc:
                    log.info("not warmed (%s): %s", statement, exc)

    def find_trace(self, project: str, run_id: str) -> str | None:
        """The trace holding a run (by its run id, or by trace id for a top-level run)."""
        key = (project, run_id)
        with self._traces_lock:
            if key in self._traces:
                self._traces.move_to_end(key)
                return self._traces[key]
        if len(run_id) == 32:
            rows = self._rows(sql.TRACE_EXISTS_SQL, {"project": project, "trace": run_id})
            found = run_id if rows else None
        else:
            parameters = {"project": project, "id": run_id}
            rows = self._rows(sql.FIND_LISTED_SQL, parameters) or self._rows(
                sql.FIND_TRACE_SQL, parameters
            )
            found = str(rows[0][0]) if rows else None
        if found is not None:
            # A span id names one trace for good: what was found stays true
            # (a run not found yet may still arrive, so that is not kept).
            with self._traces_lock:
                self._traces[key] = found
                if len(self._traces) > _TRACES_KEPT:
                    self._traces.popitem(last=False)
        return found

    def trace_version(self, project: str, trace_id: str) -> tuple[int, int, int, bool]:
        """What changes whenever anything of the trace arrives, or when it turns stale."""
        parameters = {"project": project, "trace": trace_id}
        spans, (runs, last_seen_ns) = self._rows(sql.TRACE_VERSION_SQL, parameters)[0]
        stale = last_seen_ns < time.time_ns() - self._stale_after_ns
        return int(spans), int(runs), int(last_seen_ns), stale

    def top_runs(self, project: str, trace_ids: Sequence[str]) -> dict[str, RunHeader]:
        """The top-level run of each trace, by trace id (absent: nothing stored)."""
        totals = self._totals(project, trace_ids)
        return {
            trace: self.header(row, totals.get(trace))
            for trace, row in self.top_run_rows(project, trace_ids).items()
        }

    def top_run_rows(self, project: str, trace_ids: Sequence[str]) -> dict[str, RunRow]:
        """What the header of each trace's top-level run says but for its totals."""
        parameters = {"project": project, "traces": list(trace_ids)}
        return {row[0]: RunRow(row[1], row) for row in self._rows(sql.RUNS_SQL, parameters)}

    def header(self, run: RunRow, totals: Sequence[Any] | None) -> RunHeader:
        """A run's header, from its row and its trace's row of TRACE_TOTALS_SQL."""
        return _header(run.columns, totals, time.time_ns() - self._stale_after_ns)

    def _totals(self, project: str, trace_ids: Sequence[str]) -> dict[str, Sequence[Any]]:
        """What each trace's steps add up to, by trace id."""
        parameters = {"project": project, "traces": list(trace_ids)}
        return {row[0]: row for row in self._rows(sql.TRACE_TOTALS_SQL, parameters)}

    def list_runs(
        self, project: str, f: sql.RunFilter, cursor: tuple[int, str] | None, limit: int
    ) -> list[RunKey]:
        return self._list(self._list_scope(project), f, cursor, limit)

    def run_page(
        self, project: str, f: sql.RunFilter, cursor: tuple[int, str] | None, limit: int
    ) -> tuple[list[RunKey], dict[str, int]]:
        """A page of the list and its counts, the runs that moved found once for both."""
        scope = self._list_scope(project)
        return self._list(scope, f, cursor, limit), self._count(scope, f)

    def _list(
        self, scope: dict[str, Any], f: sql.RunFilter, cursor: tuple[int, str] | None, limit: int
    ) -> list[RunKey]:
        query, parameters = sql.list_runs(f, cursor, limit, _fresh(scope))
        rows = self._rows(query, parameters | scope)
        top = [row[0] for row in rows if not row[-1]]
        totals = self._totals(scope["project"], top) if top else {}
        stale_before = time.time_ns() - self._stale_after_ns
        return [
            RunKey(
                str(row[0]),
                str(row[1]),
                int(row[8]),
                None if row[-1] else _header(row[:-1], totals.get(row[0]), stale_before),
            )
            for row in rows
        ]

    def _count(self, scope: dict[str, Any], f: sql.RunFilter) -> dict[str, int]:
        query, parameters = sql.count_runs(f, _fresh(scope))
        return {str(s): int(n) for s, n in self._rows(query, parameters | scope)}

    def _list_scope(self, project: str) -> dict[str, Any]:
        """The parameters of a list's sources: with `fresh` unless there are too many."""
        mark, done = self.run_list_marks()
        scope: dict[str, Any] = {
            "project": project,
            "margin": self.run_list_margin_ns,
            "mark": mark,
            "done": done,
        }
        fresh = [str(row[0]) for row in self._rows(sql.FRESH_TRACES_SQL, scope)]
        return scope | {"fresh": fresh} if len(fresh) <= sql.FRESH_INLINE_MAX else scope

    def run_list_marks(self) -> tuple[int, int]:
        """When the run list's last complete refresh began and ended (0, 0: never)."""
        began, done = self._rows(sql.MARKS_SQL, {})[0]
        return int(began), int(done)

    def run_list_mark(self) -> int:
        """When the run list's last complete refresh began (0: never)."""
        return self.run_list_marks()[0]

    def refresh_run_list(self, since_ns: int, mark_ns: int, recheck_ns: int | None = None) -> int:
        """Fold the runs that moved since `since_ns` into the run list; how many did.

        `mark_ns`: a moment before this call read anything, which a list may
        take the run list as current at (less the margin) once it returns.
        `recheck_ns`: also fold the runs moved since then whose row is stale.
        """
        found = self._rows(sql.MOVED_SQL, {"since": since_ns})
        if recheck_ns is not None and len(found) <= sql.FRESH_INLINE_MAX:
            found = [*found, *self._rows(sql.STALE_SQL, {"since": recheck_ns})]
        moved = sorted({(str(p), str(t)) for p, t in found})
        if not moved:
            return 0
        bound = len(moved) <= sql.FRESH_INLINE_MAX
        parameters = {"since": since_ns, "mark": mark_ns} | ({"moved": moved} if bound else {})
        for statement in sql.refresh_run_list(bound):
            self._command(statement, parameters)
        return len(moved)

    def apply_run_list_deletes(self) -> None:
        """Write the refreshes' deletes into the run list's parts (in the background)."""
        self._command(sql.APPLY_DELETES_SQL, {})

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

    def trace_shape(self, project: str, trace_id: str) -> np.ndarray:
        """Every step of the trace as numbers (sql.TRACE_SHAPE_SQL), one record each."""
        parameters = {"project": project, "trace": trace_id}
        with self._client() as client, _storage_errors():
            return client.query_np(
                sql.TRACE_SHAPE_SQL, parameters=parameters, settings=sql.READ_SETTINGS
            )

    def trace_steps(self, project: str, trace_id: str, step_ids: Sequence[str]) -> list[SpanRow]:
        """Some steps of the trace, as trace_rows reads them."""
        parameters = {"project": project, "trace": trace_id, "steps": list(step_ids)}
        return _one_each(self._rows(sql.TRACE_STEPS_SQL, parameters))

    def trace_rows(self, project: str, trace_id: str) -> list[SpanRow]:
        """The trace's steps, each once: a pending span only until its span arrives."""
        return _one_each(self._rows(sql.TRACE_ROWS_SQL, {"project": project, "trace": trace_id}))


def _one_each(rows: Sequence[Sequence[Any]]) -> list[SpanRow]:
    """Each step once: a pending span only until its span arrives."""
    ended = {row[0] for row in rows if not row[-1]}
    return [_span_row(row) for row in rows if not row[-1] or row[0] not in ended]


def _fresh(scope: dict[str, Any]) -> sql.Fresh:
    if "fresh" not in scope:
        return "found"
    return "bound" if scope["fresh"] else "none"


@contextmanager
def _storage_errors() -> Iterator[None]:
    """Where SQL runs: ClickHouse's errors leave as StorageError."""
    try:
        yield
    except (ClickHouseError, OSError) as exc:
        if "TIMEOUT_EXCEEDED" in str(exc):
            raise QueryTimeout("the query took longer than the request timeout") from exc
        raise StorageError(f"ClickHouse query failed: {exc}") from exc


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
    # Positional, in SpanRow's order: one per span of a tree, so it is kept cheap.
    return SpanRow(
        span_id, parent_id, kind, name, status, start_ns, duration_ns, index, model,
        Tokens(input_tokens, output_tokens, total_tokens), cost, error_type, error_message,
        input_preview, output_preview, trigger, version, session_id, service, tuple(warnings),
    )  # fmt: skip

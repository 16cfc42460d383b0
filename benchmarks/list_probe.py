"""Where a run list's time goes: each ClickHouse query of one page, timed apart.

    .venv/bin/python -m benchmarks.list_probe [--runs 1000000] [--repeat 40] [--ingest 5000]

On the query benchmark's dataset (generated first if missing), with the
query API, and with `--ingest N` the collector and eight gRPC exporters, in
this process, as `query_bench` runs them. Each page is asked as the API asks
for it (`Store.run_page`): the run list's marks, the runs that moved since
its last refresh (read fresh), the page, its runs' totals and the counts.
The query benchmark times the whole request over HTTP; this says which part
of it to work on. Then the first page over HTTP, beside `/healthz`, which
asks ClickHouse nothing: what the request and the event loop add.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
from clickhouse_connect.driver.query import QueryResult

from benchmarks.ingest_bench import percentile
from benchmarks.query_bench import Bench, arguments
from tracehouse.query_api import sql
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client

# The query benchmark's two lists (its `/runs` requests), as the store gets them.
LISTS = {
    "first page with counts": sql.RunFilter(),
    "filtered and searched": sql.RunFilter(statuses=("failed",), q="weather", trigger="manual"),
}
PARTS = ("marks", "fresh runs", "page", "totals", "counts")


class TimedStore(Store):
    """A store that keeps what each of its queries took, by part of a page."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.times: dict[str, float] = {}
        self.fresh = 0  # how many runs the last page read fresh

    def _query(self, query: str, parameters: dict[str, Any]) -> QueryResult:
        began = time.perf_counter()
        result = super()._query(query, parameters)
        self.times[_part(query)] = (time.perf_counter() - began) * 1000
        if query == sql.FRESH_TRACES_SQL:
            self.fresh = len(result.result_rows)
        return result


_KNOWN = {
    sql.MARKS_SQL: "marks",
    sql.FRESH_TRACES_SQL: "fresh runs",
    sql.TRACE_TOTALS_SQL: "totals",
}


def _part(query: str) -> str:
    # The page and the counts are built per filter; only the page sorts.
    return _KNOWN.get(query, "page" if "ORDER BY started_ns DESC" in query else "counts")


def probe(store: TimedStore, f: sql.RunFilter, repeat: int) -> str:
    """A table row: p50 / p95 ms of each part and of the whole, and the fresh runs' median."""
    times: dict[str, list[float]] = {part: [] for part in (*PARTS, "whole")}
    fresh = []
    store.run_page("default", f, None, 50)  # the first read, cold, as query_bench's own column
    for _ in range(repeat):
        store.times = {}
        began = time.perf_counter()
        store.run_page("default", f, None, 50)
        times["whole"].append((time.perf_counter() - began) * 1000)
        for part in PARTS:
            # A page with no top-level run has no totals to read.
            times[part].append(store.times.get(part, 0.0))
        fresh.append(store.fresh)
    cells = [f"{statistics.median(t):.0f} / {percentile(t, 0.95):.0f}" for t in times.values()]
    return f"{statistics.median(fresh):.0f} | " + " | ".join(cells)


def main() -> None:
    args = arguments(repeat=40, timed="the pages are asked for")
    # Each list is asked for `repeat` times at well under a second each.
    bench = Bench.start(args.runs, args.ingest, seconds=1.5 * args.repeat + 30)
    client = open_client(bench.dsn)
    store = TimedStore(client)
    print(f"\n{args.repeat} pages each, p50 / p95 ms\n")
    print("| list | fresh runs | " + " | ".join(PARTS) + " | whole page |")
    print("|---|---|" + "---|" * (len(PARTS) + 1))
    for label, f in LISTS.items():
        print(f"| {label} | {probe(store, f, args.repeat)} |", flush=True)
    client.close()
    # The same first page over HTTP, and an answer with no ClickHouse in it:
    # what the event loop and the request add to a page.
    print("\n| over HTTP | p50 / p95 ms |\n|---|---|")
    with httpx.Client(base_url=f"http://127.0.0.1:{bench.ports.api}", timeout=60) as http:
        for path in ("/healthz", "/api/v1/runs"):
            times = []
            for _ in range(args.repeat):
                began = time.perf_counter()
                http.get(path).raise_for_status()
                times.append((time.perf_counter() - began) * 1000)
            p50, p95 = statistics.median(times), percentile(times, 0.95)
            print(f"| GET {path} | {p50:.1f} / {p95:.1f} |", flush=True)
    bench.stop("list_probe", args)


if __name__ == "__main__":
    main()

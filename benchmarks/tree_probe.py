"""Where a big run's first level goes: each step of `runs.first_level`, timed apart.

    .venv/bin/python -m benchmarks.tree_probe [--runs 1000000] [--repeat 20] [--ingest 5000]

On the query benchmark's dataset (generated first if missing) and its
100,000-step run, in the query benchmark's setting (`query_bench.Bench`).
Each read is done as `first_level` does it, with a store and a tree cache
of its own each time, so none of it is cached by the service: finding the
run's trace, its version, its run's row, its shape, the level (numpy), the
level's rows, and the header with the level's steps. Then the same level
as one call, and the whole tree assembled (`run_tree`), as the API read it
before levels.py. The first read of each is the cold one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.ingest_bench import percentile
from benchmarks.query_bench import BIG, Bench, arguments
from tracehouse.query_api import levels
from tracehouse.query_api.runs import TreeCache, first_level, run_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client

TRACE, RUN = BIG


def parts(store: Store) -> dict[str, float]:
    """One first level read step by step: ms of each."""
    times: dict[str, float] = {}

    def timed(label: str, call: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        answer = call()
        times[label] = (time.perf_counter() - began) * 1000
        return answer

    timed("find the trace", lambda: store.find_trace("default", RUN))
    timed("version", lambda: store.trace_version("default", TRACE))
    run = timed("run row", lambda: store.top_run_rows("default", [TRACE])[TRACE])
    shape = timed("shape", lambda: store.trace_shape("default", TRACE))
    level = timed("level (numpy)", lambda: levels.first_level(shape, run.run_id))
    assert level is not None, "the benchmark's big run is read alone"
    ids = level.span_ids()
    steps = timed("level's rows", lambda: store.trace_steps("default", TRACE, ids))
    rows = {row.span_id: row for row in steps}
    header = store.header(run, levels.totals_row(level, TRACE, rows))
    timed("header and steps", lambda: levels.level_tree(level, rows, header))
    return times


def main() -> None:
    args = arguments(repeat=20, timed="the trees are read")
    bench = Bench.start(args.runs, args.ingest, seconds=2.0 * args.repeat + 30)
    clients = [open_client(bench.dsn) for _ in range(2)]

    def fresh(call: Callable[[Store, TreeCache], Any]) -> Callable[[], Any]:
        return lambda: call(Store(clients), TreeCache(1_000_000))

    rounds = [parts(Store(clients)) for _ in range(args.repeat + 1)]
    whole: dict[str, list[float]] = {label: [r[label] for r in rounds] for label in rounds[0]}
    for label, call in (
        ("first level, one call", fresh(lambda s, c: first_level(s, "default", RUN, c))),
        ("whole tree assembled", fresh(lambda s, c: run_tree(s, "default", RUN, c))),
    ):
        whole[label] = []
        for _ in range(args.repeat + 1):
            began = time.perf_counter()
            call()
            whole[label].append((time.perf_counter() - began) * 1000)
    print(f"\nthe first level of {RUN} (100,000 steps), {args.repeat} reads after the first\n")
    print("| part | first (cold) ms | p50 ms | p95 ms |\n|---|---|---|---|")
    for label, (first, *rest) in whole.items():
        print(f"| {label} | {first:.1f} | {statistics.median(rest):.1f} | "
              f"{percentile(rest, 0.95):.1f} |")  # fmt: skip
    for client in clients:
        client.close()
    bench.stop("tree_probe", args)


if __name__ == "__main__":
    main()

"""Query benchmark: 1M runs and 20M steps in embedded ClickHouse, timed over real HTTP.

    .venv/bin/python -m benchmarks.query_bench [--runs 1000000] [--repeat 30] [--ingest 5000]

Generates the dataset once under benchmarks/.data (reused while its size
matches), starts the query API in this process on a free port, and reports
p50/p95 latency for the DESIGN.md §5 query bars. With `--ingest N` the
collector runs in the same process too and eight gRPC exporters send the
ingest benchmark's agent runs at N spans/s while the queries are timed
(those runs stay in the dataset: they are newer than it, so they head the list).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import httpx

from benchmarks import load
from benchmarks.ingest_bench import Backoff, GrpcSender, Tally, paced, percentile
from benchmarks.query_data import generate_runs, generate_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import migrate
from tracehouse.serve import Ports, Roles, serve
from tracehouse.settings import Settings

DATA = Path(__file__).resolve().parent / ".data" / "query"
SMALL = ("0" * 31 + "1", "00000000000000a1")
BIG = ("0" * 31 + "2", "00000000000000b2")


def prepare(dsn: str, runs: int) -> int:
    """The dataset of `runs` runs, generated if missing; how many runs it holds."""
    client = open_client(dsn)
    migrate(client, SINGLE_NODE, 0)
    # Datasets made before ids were padded to 16 hex digits have some of 14,
    # which send a big tree's first level the whole way (levels.py).
    unpadded = "SELECT count() FROM spans WHERE TraceId = {trace:String} AND length(SpanId) != 16"
    if client.query(unpadded, parameters={"trace": BIG[0]}).result_rows[0][0]:
        raise SystemExit(f"this dataset's ids are not padded: delete {DATA} and run again")
    stored = client.query("SELECT count() FROM runs FINAL").result_rows[0][0]
    if stored < runs:
        print(f"generating {runs:,} runs ({runs * 20:,} spans)...", flush=True)
        began = time.perf_counter()
        generate_runs(client, runs - stored, first_run=stored)
        generate_tree(client, SMALL[0], SMALL[1], size=1_000, children=10)
        generate_tree(client, BIG[0], BIG[1], size=100_000, children=100)
        print(f"  generated in {time.perf_counter() - began:.0f} s", flush=True)
    # Measure the steady state, not the minutes of merging after a bulk load.
    while client.query("SELECT count() FROM system.merges").result_rows[0][0]:
        time.sleep(1)
    spans = client.query("SELECT count() FROM spans").result_rows[0][0]
    traces = client.query("SELECT uniqExact(TraceId) FROM runs").result_rows[0][0]
    print(f"dataset: {traces:,} runs, {spans:,} spans")
    client.close()
    return int(traces)


def start_api(dsn: str, collector: bool = False) -> tuple[Ports, Callable[[], None]]:
    settings = Settings(clickhouse_url=dsn, api_port=0, grpc_port=0, http_port=0, retention_days=0)
    ready = threading.Event()
    ports: list[Ports] = []
    stop = asyncio.Event()
    loop: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loop.append(asyncio.get_running_loop())
        await serve(settings, Roles(collector=collector), stop,
                    on_ready=lambda p: (ports.append(p), ready.set()))  # fmt: skip

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(120):
        sys.exit("query API did not start")

    def shutdown() -> None:
        loop[0].call_soon_threadsafe(stop.set)
        thread.join(30)

    return ports[0], shutdown


class Ingest:
    """Eight gRPC exporters sending agent runs at `rate` spans/s for `seconds`, in a thread.

    `seed` picks the runs' trace ids: the dataset's run count, so that each
    benchmark run sends traces of its own. With one seed every run sent the
    same traces again, and each copy stayed in `spans` until merged: after
    eight runs a list's first page summed ~800 rows for each of its 100-step
    runs, and its totals took 55 ms where they had taken 11. The runs start
    now, so that they head the list as arriving runs do; with the load's
    fixed start an earlier run's traces were the list's head instead, runs
    that no longer moved.
    """

    EXPORTERS = 8

    def __init__(self, port: int, rate: float, seconds: float, seed: int) -> None:
        self._items = load.generate(seed, int(rate * seconds), start_ns=time.time_ns())
        self._port, self._rate = port, rate
        self._tally: list[Tally] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._send(),), daemon=True)

    async def _send(self) -> None:
        senders = [GrpcSender(self._port) for _ in range(self.EXPORTERS)]
        backoff = Backoff(0.1, random.Random(1))
        self._tally.append(await paced(senders, self._items, self._rate, backoff))
        for sender in senders:
            await sender.close()

    def start(self) -> None:
        self._thread.start()

    def report(self) -> str:
        """What the exporters saw; called when the timing is over."""
        covered = "throughout" if self._thread.is_alive() else "NOT throughout: it ended first"
        self._thread.join()
        tally = self._tally[0]
        latency = tally.latencies_ms
        return (f"ingest {covered}: {tally.rate:,.0f} spans/s achieved of {self._rate:,.0f} "
                f"offered, export p50 {percentile(latency, 0.5):.0f} / "
                f"p99 {percentile(latency, 0.99):.0f} ms, {tally.retries} retries")  # fmt: skip


def wait_for_run_list(dsn: str) -> None:
    """Until the API's first refresh of the run list is done (the whole list, on a new one)."""
    began = time.perf_counter()
    client = open_client(dsn)
    store = Store(client)
    while not store.run_list_mark():
        time.sleep(0.1)
    print(f"run list current after {time.perf_counter() - began:.1f} s", flush=True)
    while client.query("SELECT count() FROM system.merges").result_rows[0][0]:
        time.sleep(1)
    client.close()


class Bench(NamedTuple):
    """The dataset, the query API on it in this process, and under ingest the collector and load."""

    dsn: str
    ports: Ports
    shutdown: Callable[[], None]
    ingest: Ingest | None

    @classmethod
    def start(cls, runs: int, ingest_rate: float, seconds: float) -> Bench:
        """Ready to be timed: the run list current and, under ingest, the load under way."""
        DATA.mkdir(parents=True, exist_ok=True)
        dsn = f"chdb://{DATA}?database=bench_{runs}"
        stored = prepare(dsn, runs)
        ports, shutdown = start_api(dsn, collector=bool(ingest_rate))
        wait_for_run_list(dsn)
        ingest = None
        if ingest_rate:
            ingest = Ingest(ports.grpc, ingest_rate, seconds, seed=stored)
            ingest.start()
            time.sleep(5)  # into the steady state: runs arriving, the run list refreshing
        return cls(dsn, ports, shutdown, ingest)

    def stop(self, module: str, args: argparse.Namespace) -> None:
        """The load's report, everything stopped, and the command that reproduces the run."""
        if self.ingest:
            print(f"\n{self.ingest.report()}")
        self.shutdown()
        extra = f" --ingest {args.ingest:.0f}" if args.ingest else ""
        print(f"\nreproduce: .venv/bin/python -m benchmarks.{module} --runs {args.runs}"
              f" --repeat {args.repeat}{extra}")  # fmt: skip


def arguments(repeat: int, timed: str) -> argparse.Namespace:
    """A benchmark's options on this dataset: its size, how many requests, and any ingest."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--ingest", type=float, default=0.0,
                        help=f"spans/s sent by exporters while {timed}")  # fmt: skip
    return parser.parse_args()


def timed(client: httpx.Client, path: str, params: dict[str, str], repeat: int) -> list[float]:
    """The first request (cold: nothing cached), then `repeat` more."""
    times = []
    for _ in range(repeat + 1):
        began = time.perf_counter()
        client.get(path, params=params).raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return times


def main() -> None:
    args = arguments(repeat=30, timed="the queries are timed")
    # Long enough to outlast the timed requests (the report says if it did):
    # under 5,000 spans/s one request of each scenario took ~0.7 s at the
    # median, where 0.6 s had been allowed and the load ran out.
    bench = Bench.start(args.runs, args.ingest, seconds=1.0 * args.repeat + 30)
    base = f"http://127.0.0.1:{bench.ports.api}/api/v1"
    scenarios = {
        "list, first page with counts (bar p95 < 100 ms)": ("/runs", {}),
        "list, filtered and searched (bar p95 < 200 ms)": (
            "/runs", {"status": "failed", "q": "weather", "trigger": "manual"}),
        "tree of 1,000 steps (bar < 100 ms)": (f"/runs/{SMALL[1]}/tree", {}),
        "first level of a 100,000-step tree (bar < 100 ms)": (
            f"/runs/{BIG[1]}/tree", {"depth": "1"}),
    }  # fmt: skip
    print(f"\n{platform.node()} {platform.processor() or platform.machine()}, "
          f"{args.repeat} requests each\n")  # fmt: skip
    print("| query | first (cold) ms | p50 ms | p95 ms |\n|---|---|---|---|")
    with httpx.Client(base_url=base, timeout=120) as client:
        for label, (path, params) in scenarios.items():
            first, *rest = timed(client, path, params, args.repeat)
            p95 = percentile(rest, 0.95)
            print(f"| {label} | {first:.0f} | {statistics.median(rest):.1f} | {p95:.1f} |",
                  flush=True)  # fmt: skip
    bench.stop("query_bench", args)


if __name__ == "__main__":
    main()

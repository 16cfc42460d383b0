"""From how many steps a first level read alone is worth it: both reads, by tree size.

    .venv/bin/python -m benchmarks.level_sizes

Trees of 1,000 to 50,000 steps (sub-agents of ~1,000 steps each, as the
query benchmark's big tree) in a database of their own, each read as a
client's first `depth=1` of it would be: assembled whole (`run_tree`), and
its first level read alone (`first_level`, whatever `runs.LEVELS_FROM`
says), with a store and a cache of their own each time. The collector's
cycle-collector settings are the server's (`serve.collect_cycles_less_often`).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from benchmarks.query_data import generate_tree
from tracehouse.query_api import runs
from tracehouse.query_api.runs import TreeCache, first_level, run_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import migrate
from tracehouse.serve import collect_cycles_less_often

DATA = Path(__file__).resolve().parent / ".data" / "levels"
SIZES = (1_000, 3_000, 5_000, 10_000, 20_000, 50_000)
REPEAT = 9


def main() -> None:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir(parents=True)
    client = open_client(f"chdb://{DATA}?database=levels")
    migrate(client, SINGLE_NODE, 0)
    roots = {}
    for n, size in enumerate(SIZES, start=1):
        roots[size] = f"{0xC0 + n:016x}"
        generate_tree(client, f"{n:032x}", roots[size], size=size, children=max(10, size // 1000))
    while client.query("SELECT count() FROM system.merges").result_rows[0][0]:
        time.sleep(1)
    collect_cycles_less_often()
    runs.LEVELS_FROM = 0  # every tree's first level read alone, however small
    print("\n| steps | whole tree assembled, p50 ms | first level read alone, p50 ms |")
    print("|---|---|---|")
    for size, root in roots.items():
        medians = []
        for read in (run_tree, first_level):
            times = []
            for _ in range(REPEAT):
                began = time.perf_counter()
                read(Store(client), "default", root, TreeCache(1_000_000))
                times.append((time.perf_counter() - began) * 1000)
            medians.append(statistics.median(times))
        print(f"| {size:,} | {medians[0]:.1f} | {medians[1]:.1f} |", flush=True)
    client.close()
    print("\nreproduce: .venv/bin/python -m benchmarks.level_sizes")


if __name__ == "__main__":
    main()

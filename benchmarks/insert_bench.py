"""What ClickHouse's side of ingest costs per span: the INSERTs and their merges, by schema variant.

The blocks are the collector's own (the load generator's exports, decoded,
mapped and encoded as a decode worker does), made before anything is timed
and joined into batches of each size; each variant gets a fresh embedded
ClickHouse, the schema as migrated, then the variant's change. CPU is the
whole process's (chDB inserts on the calling thread and merges on its own),
from the first insert until no merge is left.

    .venv/bin/python -m benchmarks.insert_bench
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import load
from tracehouse.collector.batcher import Block, join
from tracehouse.collector.prepare import Format, Limits, prepare_export
from tracehouse.collector.writer import span_writer
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import migrate

DATA = Path(__file__).resolve().parent / ".data" / "insert"
LIMITS = Limits(64 << 20, 1 << 20)
_BIG_COLUMNS = (
    ("Input", "String"),
    ("Output", "String"),
    ("SpanAttributes", "Map(LowCardinality(String), String)"),
)
VARIANTS: dict[str, list[str]] = {
    "as migrated": [],
    "without the runs view": ["DROP VIEW runs_mv"],
    "without skip indexes": [
        f"ALTER TABLE spans DROP INDEX {name}"
        for name in ("idx_span_id", "idx_parent_span_id", "idx_ingested_at")
    ],
    "LZ4 for input, output, attributes": [
        f"ALTER TABLE spans MODIFY COLUMN {name} {kind} CODEC(LZ4)" for name, kind in _BIG_COLUMNS
    ],
}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(blocks: Sequence[Block], size: int) -> list[Block]:
    out: list[Block] = []
    pending: list[Block] = []
    spans = 0
    for block in blocks:
        pending.append(block)
        spans += block.count
        if spans >= size:
            out.append(join(pending))
            pending, spans = [], 0
    return [*out, join(pending)] if pending else out


def measure(variant: str, blocks: list[Block]) -> tuple[float, float, float]:
    """µs of CPU per span: inserting, then merging until done; and µs of wall time inserting."""
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=DATA) as directory:
        client = open_client(f"chdb://{directory}?database=bench")
        try:
            migrate(client, SINGLE_NODE, 0)
            for statement in VARIANTS[variant]:
                client.command(statement)
            writer = span_writer(client)
            spans = sum(b.count for b in blocks)
            began_cpu, began = cpu_s(), time.perf_counter()
            for block in blocks:
                writer.write(block)
            inserted_cpu, inserted = cpu_s(), time.perf_counter()
            quiet = 0
            while quiet < 3:  # three idle seconds in a row: merging is over
                time.sleep(1)
                merges = client.query("SELECT count() FROM system.merges").result_rows[0][0]
                quiet = 0 if merges else quiet + 1
            merged_cpu = cpu_s()
        finally:
            client.close()
    per_span = 1e6 / spans
    return (
        (inserted_cpu - began_cpu) * per_span,
        (merged_cpu - inserted_cpu) * per_span,
        (inserted - began) * per_span,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=150_000)
    parser.add_argument("--batch-spans", default="1000,5000", help="batch sizes, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    exports = load.generate(args.seed, args.spans)
    blocks = [prepare_export(e.body, Format.PROTOBUF, "", LIMITS, "default") for e in exports]
    spans = sum(b.count for b in blocks)
    print(f"\n{platform.node()}, {spans:,} spans, {len(exports)} exports\n")
    print("| variant | batch spans | insert CPU µs/span | merge CPU µs/span after | total |"
          " insert wall µs/span |\n|---|---|---|---|---|---|")  # fmt: skip
    for size in (int(s) for s in args.batch_spans.split(",")):
        joined = batches(blocks, size)
        for variant in VARIANTS:
            insert, merge, wall = measure(variant, joined)
            print(f"| {variant} | {size:,} | {insert:.1f} | {merge:.1f} | {insert + merge:.1f} |"
                  f" {wall:.1f} |", flush=True)  # fmt: skip
    print(f"\nreproduce: .venv/bin/python -m benchmarks.insert_bench --spans {args.spans} "
          f"--batch-spans {args.batch_spans} --seed {args.seed}")  # fmt: skip


if __name__ == "__main__":
    main()

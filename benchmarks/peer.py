"""Peer benchmark: the ingest load against tracehouse and Arize Phoenix, side by side.

    make bench-peer
    .venv/bin/python -m benchmarks.peer [--phoenix-venv benchmarks/.peer-venv] [--spans 30000]
        [--seed 1] [--exporters 8] [--transport http|grpc|both] [--wait 600] [--quick]

One seeded load (benchmarks/load.py) is generated once, and the same
exports are sent to a fresh `tracehouse serve` and to a fresh `phoenix
serve` (from its own virtual environment, `make bench-peer` installs it:
Phoenix is no dependency of the project), one after the other, by the
ingest benchmark's own exporters at saturation. Each figure is measured the
same way for both: persisted spans/s is the spans sent divided by the time
from the first send until the target reports every one of them persisted.
tracehouse reports through its query API (every run listed). Phoenix
answers an export before it writes it, so its count is the rows of the
`spans` table in its SQLite database, read-only; a few runs are then
checked through its REST API. If Phoenix is still short after `--wait`
seconds, what it reached is reported, at the rate it reached it.

Phoenix refuses exports (HTTP 503, gRPC UNAVAILABLE) while 20,000 decoded
spans wait in its queue; the exporters retry with the SDK's backoff, and an
export refused at every attempt is given up, as an SDK gives it up, and
counted: the persisted rate is then of the spans accepted.

The load is small because Phoenix is slow (a few hundred spans/s at most on
two cores), so tracehouse's figure here is of a few seconds' load:
`benchmarks.ingest_bench` measures its saturation on 300,000 spans.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from benchmarks.ingest_bench import (
    MAX_ATTEMPTS,
    Phase,
    TransportResult,
    acked_rate,
    latency_cell,
    rate,
    run_transport,
)
from benchmarks.load import Export, generate
from benchmarks.targets import Process, Server, Target, Unit, free_port

DEFAULT_VENV = Path("benchmarks/.peer-venv")


class Phoenix(Process):
    """`phoenix serve` with SQLite in a fresh working directory, on free ports."""

    unit: Unit = "spans"

    def __init__(self, venv: Path, version: str) -> None:
        directory = Path(tempfile.mkdtemp(prefix="phoenix-peer-"))
        self.name = f"Arize Phoenix {version}"
        self.http, self.grpc = free_port(), free_port()
        # The names are Phoenix's documented settings (self-hosting, configuration). Its
        # telemetry and external resources are off: this machine reaches no internet. A
        # PYTHONPATH meant for tracehouse's code must not reach Phoenix's environment.
        env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        env |= {"PHOENIX_WORKING_DIR": str(directory), "PHOENIX_HOST": "127.0.0.1",
               "PHOENIX_PORT": str(self.http), "PHOENIX_GRPC_PORT": str(self.grpc),
               "PHOENIX_TELEMETRY_ENABLED": "false",
               "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false"}  # fmt: skip
        command = [str(venv / "bin" / "phoenix"), "serve"]
        super().__init__(directory, command, f"http://127.0.0.1:{self.http}/healthz", env)
        self._db = directory / "phoenix.db"
        self._rest = httpx.Client(base_url=f"http://127.0.0.1:{self.http}", timeout=60)

    def persisted(self) -> int:
        # Read-only, so the probe never holds Phoenix's write lock; in WAL mode a reader
        # does not block its writer. Phoenix's own API would spend its (busy) event loop.
        with contextlib.closing(sqlite3.connect(f"{self._db.as_uri()}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM spans").fetchone()[0])

    def spans_of(self, trace_id: str) -> int:
        # A run has at most a few hundred spans: one page of 1,000 holds them all.
        params = {"trace_id": trace_id, "limit": "1000"}
        response = self._rest.get("/v1/projects/default/spans", params=params)
        response.raise_for_status()
        return len(response.json()["data"])

    def stop(self) -> None:
        self._rest.close()
        super().stop()


def phoenix_version(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"no Phoenix environment at {venv}: `make bench-peer` creates it")
    code = "from importlib.metadata import version; print(version('arize-phoenix'))"
    done = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    return done.stdout.strip()


# -- report ------------------------------------------------------------------------------------

Column = tuple[str, str, TransportResult]  # target, transport, result


def report(columns: list[Column], args: argparse.Namespace) -> None:
    print(f"\n| figure | {' | '.join(f'{name} ({t})' for name, t, _ in columns)} |")
    print(f"|---|{'---|' * len(columns)}")

    def row(label: str, cell: Callable[[Phase, TransportResult], str]) -> None:
        print(f"| {label} | {' | '.join(cell(r.phases[-1], r) for _, _, r in columns)} |")

    row(
        f"**persisted spans/s** ({args.exporters} exporters, first send → all persisted)",
        lambda p, _: f"**{rate(p):,.0f}**" + ("" if p.complete else " (timed out)"),
    )
    row(f"spans persisted / accepted / refused {MAX_ATTEMPTS} times (given up)",
        lambda p, _: f"{p.persisted:,} / {p.tally.spans:,} / {p.tally.refused:,}")  # fmt: skip
    row("first send → all persisted, s", lambda p, _: f"{p.seconds:,.1f}")
    row("acked spans/s (first send → last answer)", lambda p, _: f"{acked_rate(p):,.0f}")
    row("export latency p50 / p99, ms", lambda p, _: latency_cell(p))
    row(
        "retryable answers (each retried after the SDK's backoff)",
        lambda p, _: f"{p.tally.retries}",
    )
    row("server CPU (100% = one core)", lambda p, _: f"{p.server_cpu / p.seconds:.0%}")
    row(
        "server CPU s per 1,000 spans persisted",
        lambda p, _: f"{1000 * p.server_cpu / max(p.persisted, 1):.2f}",
    )
    row(
        "server peak RSS (VmHWM) / RSS at end, MiB",
        lambda _, r: f"{r.peak_rss_mib:,.0f} / {r.end_rss_mib:,.0f}",
    )
    row("spot check: 5 runs read back whole", lambda p, _: p.check)  # fmt: skip
    for transport in dict.fromkeys(t for _, t, _ in columns):
        ours, peer = (rate(r.phases[-1]) for _, t, r in columns if t == transport)
        times = f"{ours / peer:,.0f} times" if peer else "infinitely"
        print(f"\n{transport}: tracehouse persisted {times} Phoenix's spans/s.")


def machine() -> str:
    memory = next(line for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))  # fmt: skip
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())  # fmt: skip
    return f"`nproc` {len(os.sched_getaffinity(0))}, `{' '.join(memory.split())}`, {model}"


def code() -> str:
    """Where the server's code comes from (PYTHONPATH can point it away from this tree)."""
    import tracehouse.collector.pipeline as pipeline

    return str(Path(pipeline.__file__).parents[3])


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phoenix-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--spans", type=int, default=30_000, help="spans sent to each target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exporters", type=int, default=8, help="concurrent exporters")
    parser.add_argument("--transport", choices=("grpc", "http", "both"), default="both")
    parser.add_argument(
        "--wait",
        type=float,
        default=600.0,
        help="s after the last answer to wait for all to persist",
    )
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay, s (SDK)")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.spans, args.wait = min(args.spans, 1_000), min(args.wait, 60.0)
    return args


def main() -> None:
    args = parse_args()
    version = phoenix_version(args.phoenix_venv)
    print(f"generating {args.spans:,} spans (seed {args.seed})...", flush=True)
    exports: list[Export] = generate(args.seed, args.spans)
    spans = sum(item.spans for item in exports)
    runs = sum(len(item.runs) for item in exports)
    print(f"  {runs:,} runs, {spans:,} spans in {len(exports):,} exports, the same to both",
          flush=True)  # fmt: skip
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    transports = ["http", "grpc"] if args.transport == "both" else [args.transport]
    targets: list[Callable[[], Target]] = [Server, lambda: Phoenix(args.phoenix_venv, version)]
    columns: list[Column] = []
    for transport in transports:
        for make in targets:
            target = make()
            result = asyncio.run(
                run_transport(target, transport, [(None, exports)], args, args.wait, drop=True)
            )
            columns.append((target.name, transport, result))
    print(f"\nDate {started}; machine: {machine()}; Python {platform.python_version()}; "
          f"tracehouse commit {commit()}, code from {code()}; "
          f"Arize Phoenix {version} (SQLite, defaults).\n"
          f"Load average at the start / end (other work on this machine shows here): "
          f"{', '.join(f'{v:.1f}' for v in load)} / "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")  # fmt: skip
    report(columns, args)
    print(f"\nreproduce: .venv/bin/python -m benchmarks.peer --phoenix-venv {args.phoenix_venv} "
          f"--spans {args.spans} --seed {args.seed} --exporters {args.exporters} "
          f"--transport {args.transport} --wait {args.wait:g}")  # fmt: skip


if __name__ == "__main__":
    main()

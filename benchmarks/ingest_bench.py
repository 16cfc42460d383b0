"""Ingest benchmark: real OTLP exporters against `tracehouse serve` in a subprocess.

    .venv/bin/python -m benchmarks.ingest_bench [--spans 300000] [--seed 1] [--exporters 8]
        [--transport grpc|http|both] [--quick]

A seeded load of agent runs (benchmarks/load.py) is generated and encoded
before anything is timed. For each transport a fresh server is started on
embedded chDB in a temporary directory (so its CPU time and peak RSS are
its own), then:

1. exports are sent at fixed offered loads (1,000 and 10,000 spans/s by
   default) by N exporters, each sending one export at a time like an SDK
   exporter, and the latency of each export is recorded;
2. the saturation load is sent by the same N exporters back to back; the
   persisted rate is the spans sent divided by the time from the first send
   until the query API lists every run sent (a few runs are then checked
   for their full step count).

Retryable answers (gRPC UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP 429 / 503)
are retried after the SDK's doubling backoff with jitter, or after the
server's Retry-After, and counted. The same encoded requests are also
decoded in this process on one thread with the collector's own
`prepare_export` (what a decode worker does): the Python-side ceiling of
one core, which the persisted rate is compared to.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_service

from benchmarks.load import Export, generate
from benchmarks.targets import Server, Target, wait_persisted
from tracehouse.collector.prepare import Format, Limits, prepare_export
from tracehouse.settings import Settings

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
RETRYABLE_GRPC = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
RETRYABLE_HTTP = (429, 502, 503, 504)
MAX_ATTEMPTS = 8
VISIBLE_TIMEOUT = 300.0
MIB = 1024 * 1024


# -- exporters ---------------------------------------------------------------------------


class Sender(Protocol):
    async def attempt(self, body: bytes) -> float | None:
        """None when accepted; when the answer is retryable, the server's delay hint (0: none)."""
        ...

    async def close(self) -> None: ...


class GrpcSender:
    def __init__(self, port: int) -> None:
        # Each exporter is its own process in real life: its own connection, too.
        self._channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.use_local_subchannel_pool", 1),
                     ("grpc.max_send_message_length", 64 * MIB)],
        )  # fmt: skip
        self._export = self._channel.unary_unary(EXPORT_METHOD)  # bytes in, bytes out

    async def attempt(self, body: bytes) -> float | None:
        try:
            await self._export(body, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in RETRYABLE_GRPC:
                return 0.0
            raise
        return None

    async def close(self) -> None:
        await self._channel.close()


class HttpSender:
    def __init__(self, port: int) -> None:
        self._client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"content-type": "application/x-protobuf"},
        )

    async def attempt(self, body: bytes) -> float | None:
        response = await self._client.post("/v1/traces", content=body)
        if response.status_code == 200:
            return None
        if response.status_code in RETRYABLE_HTTP:
            hint = response.headers.get("retry-after", "")
            return float(hint) if hint.isdigit() else 0.0
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")

    async def close(self) -> None:
        await self._client.aclose()


@dataclass
class Tally:
    """What the exporters saw in one phase."""

    latencies_ms: list[float] = field(default_factory=list)
    spans: int = 0
    retries: int = 0
    refused: int = 0  # spans of exports given up on (a dropping Backoff only)
    first_send: float = 0.0
    last_ack: float = 0.0

    @property
    def rate(self) -> float:
        """Spans acknowledged per second, first send to last acknowledgement."""
        seconds = self.last_ack - self.first_send
        return self.spans / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Backoff:
    """The SDK's retry policy: doubling from `base` seconds, ±20% jitter. After the last
    attempt an SDK drops the export; the benchmark fails instead, unless `drop`."""

    base: float
    jitter: random.Random
    drop: bool = False

    def delay(self, attempt: int, hint: float) -> float:
        return (hint or self.base * 2**attempt) * self.jitter.uniform(0.8, 1.2)


async def export(sender: Sender, item: Export, tally: Tally, backoff: Backoff) -> None:
    """One export, retried like the SDK; its latency includes the retries."""
    began = time.perf_counter()
    tally.first_send = tally.first_send or began
    for attempt in range(MAX_ATTEMPTS):
        hint = await sender.attempt(item.body)
        if hint is None:
            tally.last_ack = time.perf_counter()
            tally.latencies_ms.append((tally.last_ack - began) * 1000)
            tally.spans += item.spans
            return
        tally.retries += 1
        if attempt + 1 < MAX_ATTEMPTS:
            await asyncio.sleep(backoff.delay(attempt, hint))
    if not backoff.drop:
        raise RuntimeError(f"export not accepted after {MAX_ATTEMPTS} attempts")
    tally.refused += item.spans


async def paced(
    senders: Sequence[Sender], items: Sequence[Export], rate: float, backoff: Backoff
) -> Tally:
    """Offer `rate` spans/s: export i is due when the spans before it are; exporter k sends
    exports k, k+N, ... one at a time (a late exporter sends at once and falls behind)."""
    tally = Tally()
    start = time.perf_counter() + 0.1
    due, sent = [], 0
    for item in items:
        due.append(start + sent / rate)
        sent += item.spans

    async def exporter(k: int) -> None:
        for i in range(k, len(items), len(senders)):
            await asyncio.sleep(max(0.0, due[i] - time.perf_counter()))
            await export(senders[k], items[i], tally, backoff)

    await asyncio.gather(*(exporter(k) for k in range(len(senders))))
    return tally


async def saturate(senders: Sequence[Sender], items: Sequence[Export], backoff: Backoff) -> Tally:
    """Every exporter sends the next export as soon as its last one is answered."""
    tally = Tally()
    queue = iter(items)

    async def exporter(sender: Sender) -> None:
        for item in queue:
            await export(sender, item, tally, backoff)

    await asyncio.gather(*(exporter(sender) for sender in senders))
    return tally


# -- one transport, end to end -------------------------------------------------------------


@dataclass
class Phase:
    label: str
    offered: float | None  # spans/s, None at saturation
    tally: Tally
    seconds: float = 0.0  # first send to everything persisted (saturation) or acked (paced)
    persisted: int = 0  # spans of the phase persisted when `seconds` ended
    complete: bool = True  # everything sent was persisted before the wait timed out
    server_cpu: float = 0.0  # seconds of CPU in the phase
    client_cpu: float = 0.0
    threads: dict[str, float] = field(default_factory=dict)
    check: str = ""


@dataclass
class TransportResult:
    transport: str
    phases: list[Phase]
    peak_rss_mib: float = 0.0
    end_rss_mib: float = 0.0


def sender_for(transport: str, target: Target) -> Sender:
    return GrpcSender(target.grpc) if transport == "grpc" else HttpSender(target.http)


async def run_transport(
    target: Target,
    transport: str,
    slices: list[tuple[float | None, list[Export]]],
    args: argparse.Namespace,
    wait_s: float = VISIBLE_TIMEOUT,
    drop: bool = False,
) -> TransportResult:
    """Every slice in turn against a started target, which is stopped at the end."""
    try:
        target.wait_ready()
        senders = [sender_for(transport, target) for _ in range(args.exporters)]
        backoff = Backoff(args.backoff, random.Random(args.seed), drop)
        result = TransportResult(transport, [])
        before = (0, 0)  # runs and spans accepted in earlier phases
        for rate, items in slices:
            phase = await run_phase(target, senders, items, rate, backoff, before, wait_s)
            runs = before[0] + sum(len(item.runs) for item in items)
            before = (runs, before[1] + phase.persisted)
            phase.check = await asyncio.to_thread(spot_check, target, items, args.seed)
            result.phases.append(phase)
            print(f"  {target.name} {transport} {phase.label}: {summary(phase)}", flush=True)
        result.peak_rss_mib, result.end_rss_mib = target.memory_mib()
        for sender in senders:
            await sender.close()
        return result
    finally:
        target.stop()


async def run_phase(
    target: Target,
    senders: Sequence[Sender],
    items: list[Export],
    rate: float | None,
    backoff: Backoff,
    before: tuple[int, int],
    wait_s: float,
) -> Phase:
    """`before`: the runs and spans accepted in earlier phases, all persisted."""
    label = f"{rate:,.0f} spans/s offered" if rate else "saturation"
    cpu, threads, client = target.cpu_seconds(), target.thread_cpu(), time.process_time()
    if rate:
        tally = await paced(senders, items, rate, backoff)
    else:
        tally = await saturate(senders, items, backoff)
    runs = before[0] + sum(len(item.runs) for item in items)
    progress = await wait_persisted(target, runs, before[1] + tally.spans, wait_s)
    if not progress.complete and progress.unit == "runs":
        raise TimeoutError(f"{progress.done:,} of {progress.of:,} runs visible after {wait_s} s")
    phase = Phase(label, rate, tally, client_cpu=time.process_time() - client)
    phase.seconds = (progress.at if rate is None else tally.last_ack) - tally.first_send
    # Short of everything, the spans the count lacks are this phase's (earlier ones completed).
    phase.complete = progress.complete
    missing = 0 if progress.complete else progress.of - progress.done
    phase.persisted = tally.spans - missing
    phase.server_cpu = target.cpu_seconds() - cpu
    after = target.thread_cpu()
    phase.threads = {name: after[name] - threads.get(name, 0.0) for name in after}
    return phase


def spot_check(target: Target, items: Sequence[Export], seed: int) -> str:
    """A few runs of the phase, each with all of its spans."""
    runs = [run for item in items for run in item.runs]
    sample = random.Random(seed).sample(runs, min(5, len(runs)))
    found = [(run, target.spans_of(run.trace_id)) for run in sample]
    wrong = [f"{run.trace_id}: {n} of {run.spans} spans" for run, n in found if n != run.spans]
    return f"{len(sample) - len(wrong)}/{len(sample)} runs complete" + "".join(
        f"; {line}" for line in wrong
    )


# -- decode-only ceiling ---------------------------------------------------------------------


def decode_rates(items: Sequence[Export]) -> tuple[float, float]:
    """(protobuf parse only, all a decode worker does) spans/s, one thread, this process."""
    settings = Settings()
    limits = Limits(settings.max_decompressed_bytes, settings.max_value_bytes)
    spans = sum(item.spans for item in items)
    began = time.perf_counter()
    for item in items:
        otlp_service.ExportTraceServiceRequest().ParseFromString(item.body)
    parse = time.perf_counter() - began
    began = time.perf_counter()
    for item in items:
        block = prepare_export(item.body, Format.PROTOBUF, "", limits, "default")
        assert block.count == item.spans, (block.count, item.spans)
    return spans / parse, spans / (time.perf_counter() - began)


# -- report ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def rate(phase: Phase) -> float:
    return phase.persisted / phase.seconds if phase.seconds else 0.0


def summary(phase: Phase) -> str:
    lat = phase.tally.latencies_ms
    return (
        f"{rate(phase):,.0f} spans/s over {phase.seconds:.1f} s, "
        f"p50 {statistics.median(lat):.0f} ms, p99 {percentile(lat, 0.99):.0f} ms, "
        f"{phase.tally.retries} retries, server CPU {phase.server_cpu / phase.seconds:.0%}, "
        f"{phase.check}"
    )


def report(
    results: list[TransportResult], decode: tuple[float, float], args: argparse.Namespace
) -> None:
    names = [r.transport for r in results]
    print(f"\n| figure | {' | '.join(names)} |\n|---|{'---|' * len(names)}")

    def row(label: str, cell: Callable[[TransportResult], str]) -> None:
        print(f"| {label} | {' | '.join(cell(r) for r in results)} |")

    saturation = {r.transport: r.phases[-1] for r in results}
    row(
        f"persisted spans/s at saturation, {args.exporters} exporters (bar ≥ 50,000)",
        lambda r: f"**{rate(saturation[r.transport]):,.0f}**",
    )
    row(
        "acked spans/s at saturation (first send → last answer)",
        lambda r: f"{acked_rate(saturation[r.transport]):,.0f}",
    )
    for i, offered in enumerate(args.rates):
        bar = " (bar p99 < 100 ms)" if offered == 10_000 else ""
        row(
            f"export latency p50 / p99 ms at {offered:,.0f} spans/s offered{bar}",
            lambda r, i=i: latency_cell(r.phases[i]),
        )
    row("export latency p50 / p99 ms at saturation", lambda r: latency_cell(r.phases[-1]))
    row("retryable answers (all phases)", lambda r: str(sum(p.tally.retries for p in r.phases)))
    row(
        "collector CPU at saturation (100% = one core)",
        lambda r: f"{saturation[r.transport].server_cpu / saturation[r.transport].seconds:.0%}",
    )
    row(
        "load generator CPU at saturation (same machine)",
        lambda r: f"{saturation[r.transport].client_cpu / saturation[r.transport].seconds:.0%}",
    )
    row(
        "collector peak RSS (VmHWM) / RSS at end, MiB, its decode workers included",
        lambda r: f"{r.peak_rss_mib:,.0f} / {r.end_rss_mib:,.0f}",
    )
    row(
        "decode-only, one process: parse / parse + map + encode (a worker's work), spans/s",
        lambda r: f"{decode[0]:,.0f} / {decode[1]:,.0f}",
    )
    row(
        "persisted ÷ decode-only (parse + map + encode)",
        lambda r: f"{rate(saturation[r.transport]) / decode[1]:.2f}",
    )
    row("spot check after saturation", lambda r: saturation[r.transport].check)  # fmt: skip
    for result in results:
        threads(result.transport, saturation[result.transport])


def acked_rate(phase: Phase) -> float:
    span = phase.tally.last_ack - phase.tally.first_send
    return phase.tally.spans / span if span else 0.0


def latency_cell(phase: Phase) -> str:
    lat = phase.tally.latencies_ms
    achieved = f" ({acked_rate(phase):,.0f}/s achieved)" if phase.offered else ""
    return f"{statistics.median(lat):.0f} / {percentile(lat, 0.99):.0f}{achieved}"


def threads(transport: str, phase: Phase) -> None:
    total = phase.server_cpu
    print(f"\nCollector CPU at saturation by thread ({transport}, {total:.1f} s CPU "
          f"over {phase.seconds:.1f} s):\n\n| thread | CPU s | share |\n|---|---|---|")  # fmt: skip
    ranked = sorted(phase.threads.items(), key=lambda kv: -kv[1])
    shown = [(name, seconds) for name, seconds in ranked if seconds >= 0.01 * total][:10]
    for name, seconds in shown:
        print(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
    rest = max(0.0, total - sum(seconds for _, seconds in shown))
    print(f"| other (and threads that ended) | {rest:.1f} | {rest / total:.0%} |")


# -- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=300_000, help="spans sent at saturation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--exporters", type=int, default=8, help="concurrent exporters")
    parser.add_argument("--transport", choices=("grpc", "http", "both"), default="both")
    parser.add_argument("--rates", default="1000,10000", help="offered loads, spans/s")
    # A p99 over 10 s rests on the two or three slowest of ~220 exports, and
    # missed the merges that longer loads bring: 67 ms there, 120 over 60 s.
    parser.add_argument("--paced-seconds", type=float, default=60.0)
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay, s (SDK)")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.spans, args.paced_seconds = min(args.spans, 10_000), min(args.paced_seconds, 2.0)
    args.rates = [float(value) for value in args.rates.split(",") if value]
    return args


def split(exports: list[Export], sizes: list[int]) -> list[list[Export]]:
    """Consecutive slices of whole exports holding at least each size in spans."""
    slices, at = [], 0
    for size in sizes:
        taken, spans = [], 0
        while spans < size and at < len(exports):
            taken.append(exports[at])
            spans += exports[at].spans
            at += 1
        slices.append(taken)
    return slices


def main() -> None:
    args = parse_args()
    sizes = [int(offered * args.paced_seconds) for offered in args.rates] + [args.spans]
    print(f"generating {sum(sizes):,} spans (seed {args.seed})...", flush=True)
    began = time.perf_counter()
    exports = generate(args.seed, sum(sizes))
    slices = split(exports, sizes)
    spans = sum(item.spans for item in exports)
    runs = sum(len(item.runs) for item in exports)
    encoded = sum(len(item.body) for item in exports)
    print(f"  {runs:,} runs, {spans:,} spans in {len(exports):,} exports "
          f"(avg {spans / len(exports):.0f} spans), avg {encoded / spans:,.0f} encoded bytes "
          f"per span, generated in {time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
    decode = decode_rates(slices[-1])
    print(f"  decode-only, one thread: parse {decode[0]:,.0f} spans/s, "
          f"parse + map + encode {decode[1]:,.0f} spans/s", flush=True)  # fmt: skip
    import tracehouse.collector.pipeline as pipeline

    print(f"  server code: {Path(pipeline.__file__).parents[3]}", flush=True)
    transports = ["grpc", "http"] if args.transport == "both" else [args.transport]
    phases = [*zip(args.rates, slices, strict=False), (None, slices[-1])]
    results = [asyncio.run(run_transport(Server(), t, phases, args)) for t in transports]
    report(results, decode, args)
    rates = ",".join(f"{value:g}" for value in args.rates)
    print(f"\nreproduce: .venv/bin/python -m benchmarks.ingest_bench --spans {args.spans} "
          f"--seed {args.seed} --exporters {args.exporters} --transport {args.transport} "
          f"--rates {rates} --paced-seconds {args.paced_seconds:g}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Live benchmark: span start, text chunk and span end → WebSocket event, both live transports.

    .venv/bin/python -m benchmarks.live_bench [--samples 200] [--rate 20]
        [--background-spans-per-s 2000] [--watchers 5,25] [--transport process|clickhouse|both]
        [--poll-ms MS] [--batch-delay-ms MS] [--quick]

For each live transport a fresh `tracehouse serve` (collector and query API
in one process, embedded chDB in a temporary directory) is started with
TRACEHOUSE_LIVE_TRANSPORT set to it. Then, phase after phase, a run is
created (its pending root span over OTLP/HTTP), watched on
`WS /api/v1/runs/{run_id}/live`, and sent `--samples` samples open loop at
`--rate` per second, each a step of its life in turn:

- the step's pending span (Logfire's format) → `step_started`;
- a log record with `tracehouse.chunk.channel=output` → `output_delta`;
- the step's real span → `step_finished`.

A sample's latency runs from just before its POST to the arrival of the
matching WebSocket message, on one clock in this process. The POST's own
answer, which comes once the row is written, is recorded beside it. The
three phases: quiet; with other runs (benchmarks/load.py, ~1.5 KB spans)
offered by a thread at `--background-spans-per-s`; and that load again with
each of `--watchers` more clients watching the measured run. The background
exports' latency and the server's CPU, against the second phase, show what
watching costs ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from benchmarks.ingest_bench import RETRYABLE_HTTP, Tally, percentile
from benchmarks.load import Export, generate
from benchmarks.targets import Server

KINDS = ("step_started", "output_delta", "step_finished")
BAR_MS = 250.0
DRAIN_SECONDS = 30.0  # how long the last samples' messages may take before they count as missing
WARMUP_SECONDS = 1.0  # background load before the first sample
PROTOBUF = {"content-type": "application/x-protobuf"}
Key = tuple[str, ...]


# -- what is sent ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    key: Key  # what the matching WebSocket message is recognised by
    path: str  # /v1/traces or /v1/logs
    body: bytes


def _value(target: otlp_common.AnyValue, value: str | int) -> None:
    if isinstance(value, int):
        target.int_value = value
    else:
        target.string_value = value


def _span(
    trace: bytes, span_id: bytes, parent: bytes, name: str, start: int, end: int, **attrs: str
) -> otlp.Span:
    built = otlp.Span(trace_id=trace, span_id=span_id, parent_span_id=parent, name=name,
                      start_time_unix_nano=start, end_time_unix_nano=end)  # fmt: skip
    for key, value in attrs.items():
        _value(built.attributes.add(key=key).value, value)
    return built


def _pending(real: otlp.Span) -> otlp.Span:
    """The pending span (Logfire's format) announcing `real` as started."""
    built = _span(real.trace_id, os.urandom(8), real.span_id, real.name,
                  real.start_time_unix_nano, real.start_time_unix_nano)  # fmt: skip
    built.attributes.extend(real.attributes)
    parent = (real.parent_span_id or bytes(8)).hex()
    _value(built.attributes.add(key="logfire.span_type").value, "pending_span")
    _value(built.attributes.add(key="logfire.pending_parent_id").value, parent)
    return built


def _traces(span: otlp.Span) -> bytes:
    request = otlp_trace.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _value(resource_spans.resource.attributes.add(key="service.name").value, "live-bench")
    resource_spans.scope_spans.add().spans.append(span)
    return request.SerializeToString()


def _chunk(trace: bytes, span_id: bytes, at: int, index: int, text: str) -> bytes:
    request = otlp_logs.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    _value(resource_logs.resource.attributes.add(key="service.name").value, "live-bench")
    record = resource_logs.scope_logs.add().log_records.add(
        time_unix_nano=at, observed_time_unix_nano=at, trace_id=trace, span_id=span_id
    )
    record.body.string_value = text
    _value(record.attributes.add(key="tracehouse.chunk.channel").value, "output")
    _value(record.attributes.add(key="tracehouse.chunk.index").value, index)
    return request.SerializeToString()


class SampleRun:
    """The measured run: a root announced pending, then steps sent a part at a time."""

    def __init__(self, name: str) -> None:
        self.trace, self.root = os.urandom(16), os.urandom(8)
        self.name = name
        self.run_id = self.root.hex()

    def opening(self) -> bytes:
        now = time.time_ns()
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name}
        root = _span(self.trace, self.root, b"", self.name, now, now, **attributes)
        return _traces(_pending(root))

    def samples(self, count: int, rate: float) -> list[Sample]:
        """Encoded before anything is timed; clocks are the times each is due."""
        start, every = time.time_ns(), int(1e9 / rate)
        samples: list[Sample] = []
        for i in range(count):
            step, part = divmod(i, len(KINDS))
            span_id = self._step_id(step)
            at = start + i * every
            began = at - part * every  # the step started with its first part
            real = _span(self.trace, span_id, self.root, f"execute_tool step_{step}", began, at,
                         **{"gen_ai.operation.name": "execute_tool"})  # fmt: skip
            kind, step_id = KINDS[part], span_id.hex()
            if kind == "step_started":
                samples.append(Sample(kind, (kind, step_id), "/v1/traces", _traces(_pending(real))))
            elif kind == "output_delta":
                text = f"text of step {step}. "
                body = _chunk(self.trace, span_id, at, 0, text)
                samples.append(Sample(kind, (kind, step_id, text), "/v1/logs", body))
            else:
                samples.append(Sample(kind, (kind, step_id), "/v1/traces", _traces(real)))
        return samples

    def _step_id(self, step: int) -> bytes:
        return self.root[:4] + step.to_bytes(4, "big")


def key_of(message: dict[str, Any]) -> Key:
    kind = message.get("type", "")
    if kind in ("step_started", "step_finished", "step_failed"):
        return ("step_started" if kind == "step_started" else "step_finished", message["step_id"])
    if kind == "output_delta":
        return (kind, message["step_id"], message["text"])
    return (kind,)


# -- background load ---------------------------------------------------------------------------


class Background:
    """A thread offering other runs' exports at `rate` spans/s until stopped, one loop of its own
    so that sending never delays the measuring client's reads."""

    def __init__(self, port: int, exports: Sequence[Export], rate: float) -> None:
        self._base, self._exports, self._rate = f"http://127.0.0.1:{port}", exports, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)
        self.tally = Tally()

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _send(self) -> None:
        async with httpx.AsyncClient(base_url=self._base, timeout=30, headers=PROTOBUF) as client:
            start, offered = time.perf_counter(), 0
            sending: set[asyncio.Task[None]] = set()
            for item in self._exports:
                while (wait := start + offered / self._rate - time.perf_counter()) > 0:
                    if self._stop.is_set():
                        break
                    await asyncio.sleep(min(wait, 0.05))
                if self._stop.is_set():
                    break
                offered += item.spans
                task = asyncio.create_task(self._export(client, item))
                sending.add(task)
                task.add_done_callback(sending.discard)
            await asyncio.gather(*sending)

    async def _export(self, client: httpx.AsyncClient, item: Export) -> None:
        began = time.perf_counter()
        self.tally.first_send = self.tally.first_send or began
        for _ in range(8):
            response = await client.post("/v1/traces", content=item.body)
            if response.status_code == 200:
                self.tally.last_ack = time.perf_counter()
                self.tally.latencies_ms.append((self.tally.last_ack - began) * 1000)
                self.tally.spans += item.spans
                return
            if response.status_code not in RETRYABLE_HTTP:
                raise RuntimeError(f"background export: HTTP {response.status_code}")
            self.tally.retries += 1
            await asyncio.sleep(0.5)


# -- one phase -----------------------------------------------------------------------------------


@dataclass
class Phase:
    transport: str
    label: str
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)  # by kind
    acks_ms: list[float] = field(default_factory=list)  # POST answered (the row written)
    after_ack_ms: list[float] = field(default_factory=list)  # message arrival - POST answer
    missing: int = 0
    background: Tally | None = None
    server_cpu: float = 0.0  # seconds, while sampling
    seconds: float = 0.0
    reads_ms: list[float] = field(default_factory=list)  # GET the run's tree, after sampling

    def all_ms(self) -> list[float]:
        return [value for values in self.latencies_ms.values() for value in values]


async def measure(
    ws: Any, otlp_http: httpx.AsyncClient, samples: Sequence[Sample], rate: float, phase: Phase
) -> None:
    """Send the samples open loop at `rate`/s; time each to its WebSocket message."""
    sent: dict[Key, tuple[str, float]] = {}
    seen: dict[Key, float] = {}  # when the message arrived
    answered: dict[Key, float] = {}  # when the POST was answered

    async def receive() -> None:
        while len(seen) < len(samples):
            message = orjson.loads(await ws.recv())
            arrived, key = time.perf_counter(), key_of(message)
            if key in sent and key not in seen:
                seen[key] = arrived
                kind, t0 = sent[key]
                phase.latencies_ms.setdefault(kind, []).append((arrived - t0) * 1000)

    async def post(sample: Sample) -> None:
        began = time.perf_counter()
        response = await otlp_http.post(sample.path, content=sample.body)
        response.raise_for_status()
        answered[sample.key] = time.perf_counter()
        phase.acks_ms.append((answered[sample.key] - began) * 1000)

    receiver = asyncio.create_task(receive())
    posts = []
    start = time.perf_counter() + 0.05
    for i, sample in enumerate(samples):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent[sample.key] = (sample.kind, time.perf_counter())
        posts.append(asyncio.create_task(post(sample)))
    await asyncio.gather(*posts)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(receiver, DRAIN_SECONDS)
    phase.missing = len(samples) - len(seen)
    phase.after_ack_ms = [(seen[k] - answered[k]) * 1000 for k in seen if k in answered]


@contextlib.asynccontextmanager
async def watchers(url: str, count: int) -> AsyncIterator[None]:
    """`count` more clients watching the run, each reading everything it is sent."""

    async def drain(connection: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in connection:
                pass

    async with contextlib.AsyncExitStack() as stack:
        connections = [
            await stack.enter_async_context(websockets.connect(url, max_size=None))
            for _ in range(count)
        ]
        tasks = [asyncio.create_task(drain(c)) for c in connections]
        yield
        for task in tasks:
            task.cancel()


async def run_phase(
    server: Server, transport: str, label: str, args: argparse.Namespace,
    exports: Sequence[Export], watching: int,
) -> Phase:  # fmt: skip
    phase = Phase(transport, label)
    run = SampleRun(f"live_bench_{transport}_{len(label)}")
    api_base = f"http://127.0.0.1:{server.api}"
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http}", timeout=30,
                          headers=PROTOBUF) as otlp_http,
        httpx.AsyncClient(base_url=api_base, timeout=30) as api,
    ):  # fmt: skip
        (await otlp_http.post("/v1/traces", content=run.opening())).raise_for_status()
        await wait_run(api, run.run_id)
        url = f"ws://127.0.0.1:{server.api}/api/v1/runs/{run.run_id}/live"
        async with websockets.connect(url, max_size=None) as ws, watchers(url, watching):
            snapshot = orjson.loads(await ws.recv())
            assert snapshot["type"] == "snapshot", snapshot
            samples = run.samples(args.samples, args.rate)
            background = Background(server.http, exports, args.background_spans_per_s)
            with background if exports else contextlib.nullcontext():
                if exports:
                    await asyncio.sleep(WARMUP_SECONDS)
                cpu, began = server.cpu_seconds(), time.perf_counter()
                await measure(ws, otlp_http, samples, args.rate, phase)
                phase.server_cpu = server.cpu_seconds() - cpu
                phase.seconds = time.perf_counter() - began
                phase.reads_ms = await timed_reads(api, run.run_id)
            phase.background = background.tally if exports else None
    return phase


async def wait_run(api: httpx.AsyncClient, run_id: str) -> None:
    """Poll until the run's pending root is listed (there is nothing to wait on but its answer)."""
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline:
        if (await api.get(f"/api/v1/runs/{run_id}")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"run {run_id} not visible after 30 s")


async def timed_reads(api: httpx.AsyncClient, run_id: str, count: int = 10) -> list[float]:
    """What one read of the run costs, about what each watcher does on each change."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        (await api.get(f"/api/v1/runs/{run_id}/tree")).raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return times


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set for the server subprocess, which inherits this process's environment."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_transport(transport: str, args: argparse.Namespace, exports: list[Export]) -> list[Phase]:
    settings = {"TRACEHOUSE_LIVE_TRANSPORT": transport}
    if args.poll_ms:
        settings["TRACEHOUSE_LIVE_POLL_MS"] = str(args.poll_ms)
    if args.batch_delay_ms:
        settings["TRACEHOUSE_BATCH_MAX_DELAY_MS"] = str(args.batch_delay_ms)
    with environment(**settings):
        server = Server()
    # Each loaded phase sends runs of its own: a run sent twice would be one run.
    share = len(exports) // (1 + len(args.watchers))
    load = f"{args.background_spans_per_s:,.0f} spans/s of other runs" if exports else "no load"
    phases = [("quiet", [], 0), (load, exports[:share], 0)] + [
        (
            f"same load, {n} more watcher{'s' * (n != 1)}",
            exports[share * (i + 1) : share * (i + 2)],
            n,
        )
        for i, n in enumerate(args.watchers)
    ]
    results = []
    try:
        server.wait_ready()
        for label, load, watching in phases:
            phase = asyncio.run(run_phase(server, transport, label, args, load, watching))
            print(f"  {transport}, {label}: {summary(phase)}", flush=True)
            results.append(phase)
    finally:
        server.stop()
    return results


# -- report --------------------------------------------------------------------------------------


def cells(values: list[float]) -> str:
    if not values:
        return "0 | - | - | - | -"
    return (f"{len(values)} | {statistics.median(values):.0f} | {percentile(values, 0.95):.0f} | "
            f"{percentile(values, 0.99):.0f} | {max(values):.0f}")  # fmt: skip


def summary(phase: Phase) -> str:
    values = phase.all_ms()
    p95 = percentile(values, 0.95) if values else float("nan")
    return (f"p50 {statistics.median(values) if values else float('nan'):.0f} ms, "
            f"p95 {p95:.0f} ms, {phase.missing} missing")  # fmt: skip


def report(phases: list[Phase]) -> None:
    print("\nSpan start / text chunk / span end → WebSocket message, ms:\n")
    print("| transport | phase | event | n | p50 | p95 | p99 | max | bar p95 < 250 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for phase in phases:
        for kind in KINDS:
            print(f"| {phase.transport} | {phase.label} | {kind} | "
                  f"{cells(phase.latencies_ms.get(kind, []))} | |")  # fmt: skip
        values = phase.all_ms()
        met = values and percentile(values, 0.95) < BAR_MS and not phase.missing
        missing = f" ({phase.missing} missing)" if phase.missing else ""
        verdict = "yes" if met else "**no**"
        row = f"| {phase.transport} | {phase.label} | **all**{missing} | {cells(values)}"
        print(f"{row} | {verdict} |")
    print("\nBeside it: the POSTs' answers (sent once written), the background load, the server:\n")
    print("| transport | phase | sample POST answered p50 / p95 ms | message after answer p50 ms | "
          "background spans/s achieved | "
          "background export p50 / p99 ms | server CPU (100% = one core) | "
          "GET run tree p50 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases:
        acks, bg = phase.acks_ms, phase.background
        load = "- | -"
        if bg and bg.latencies_ms:
            lat = bg.latencies_ms
            load = f"{bg.rate:,.0f} | {statistics.median(lat):.0f} / {percentile(lat, 0.99):.0f}"
        cpu = phase.server_cpu / phase.seconds
        print(f"| {phase.transport} | {phase.label} | {statistics.median(acks):.0f} / "
              f"{percentile(acks, 0.95):.0f} | {statistics.median(phase.after_ack_ms):.0f} | "
              f"{load} | {cpu:.0%} | "
              f"{statistics.median(phase.reads_ms):.0f} |")  # fmt: skip


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="samples sent per second")
    parser.add_argument("--background-spans-per-s", type=float, default=2000.0)
    parser.add_argument("--watchers", default="5,25", help="more clients, a phase for each")
    parser.add_argument("--transport", choices=("process", "clickhouse", "both"), default="both")
    parser.add_argument(
        "--poll-ms", type=float, default=0.0, help="live_poll_ms (default: the server's, 50)"
    )
    parser.add_argument("--batch-delay-ms", type=float, default=0.0,
                        help="batch_max_delay_ms (default: 20)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="of the background load")
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.watchers = min(args.samples, 30), "10"
    args.watchers = [int(value) for value in args.watchers.split(",") if value]
    return args


def command(args: argparse.Namespace) -> str:
    line = (f".venv/bin/python -m benchmarks.live_bench --samples {args.samples} "
            f"--rate {args.rate:g} --background-spans-per-s {args.background_spans_per_s:g} "
            f"--watchers {','.join(map(str, args.watchers))} --transport {args.transport} "
            f"--seed {args.seed}")  # fmt: skip
    if args.poll_ms:
        line += f" --poll-ms {args.poll_ms:g}"
    if args.batch_delay_ms:
        line += f" --batch-delay-ms {args.batch_delay_ms:g}"
    return line


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    args = parse_args()
    started_load = load_average()
    seconds = args.samples / args.rate + WARMUP_SECONDS + 3  # a margin: drained, it stops
    loaded = 1 + len(args.watchers)
    spans = int(loaded * args.background_spans_per_s * seconds)
    print(f"generating {spans:,} background spans (seed {args.seed})...", flush=True)
    exports = generate(args.seed, spans) if spans else []
    import tracehouse.query_api.live as live

    print(f"  server code: {Path(live.__file__).parents[3]}", flush=True)
    transports = ["process", "clickhouse"] if args.transport == "both" else [args.transport]
    phases = [phase for t in transports for phase in run_transport(t, args, exports)]
    report(phases)
    print(f"\nload average at the start / end (other work on this machine shows here): "
          f"{started_load} / {load_average()}")  # fmt: skip
    print(f"\nreproduce: {command(args)}")


if __name__ == "__main__":
    main()

"""The WebSockets of DESIGN.md §4, as a client sees them, with both live transports.

A real server (collector and query API in a thread of this process) on
free ports, over real chDB. Spans go in as OTLP/HTTP protobuf exports and
streamed text as span-linked OTLP log records (HTTP, and gRPC once); a
real WebSocket client watches. Every receive has a timeout, so a missing
message fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_logs
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from builders import BASE_NS, new_id, pending, request, set_value, span
from conftest import RunningServer, server_settings

TIMEOUT = 10.0
TRANSPORTS = ["process", "clickhouse"]
PROTOBUF = {"content-type": "application/x-protobuf"}
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

Message = dict[str, Any]


@contextlib.contextmanager
def running(dsn: str, **overrides: Any) -> Iterator[RunningServer]:
    server = RunningServer(server_settings(dsn, **({"live_poll_ms": 20.0} | overrides))).start()
    try:
        yield server
    finally:
        server.stop()


# One agent run happening now ------------------------------------------------


@dataclass
class Run:
    """The spans and chunks of one agent run; times are milliseconds after `origin_ns`."""

    name: str = "helper"
    trace: bytes = field(default_factory=lambda: new_id(16))
    root_id: bytes = field(default_factory=lambda: new_id(8))
    origin_ns: int = field(default_factory=time.time_ns)

    @property
    def run_id(self) -> str:
        return self.root_id.hex()

    def _now(self, built: otlp.Span) -> otlp.Span:
        shift = self.origin_ns - BASE_NS
        built.start_time_unix_nano += shift
        built.end_time_unix_nano += shift
        return built

    def root(self, end: int = 1000, error: str | None = None) -> otlp.Span:
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": self.name}
        built = span(f"invoke_agent {self.name}", self.trace, self.root_id, start=0, end=end,
                     attributes=attributes, error=error)  # fmt: skip
        return self._now(built)

    def tool(self, name: str, start: int, end: int, error: str | None = None) -> otlp.Span:
        attributes = {"gen_ai.tool.name": name, "gen_ai.tool.call.arguments": '{"q": "x"}'}
        built = span(f"execute_tool {name}", self.trace, new_id(8), self.root_id, start=start,
                     end=end, attributes=attributes, error=error)  # fmt: skip
        return self._now(built)

    def llm(self, start: int, end: int) -> otlp.Span:
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
        built = span("chat gpt-4o", self.trace, new_id(8), self.root_id, start=start, end=end,
                     attributes=attributes)  # fmt: skip
        return self._now(built)


def chunk(step: otlp.Span, channel: str, index: int, text: str) -> logs_pb2.LogRecord:
    """A piece of streamed text, as the client helper sends it: `index` ms into the step."""
    at = step.start_time_unix_nano + (index + 1) * 1_000_000
    record = logs_pb2.LogRecord(
        time_unix_nano=at, observed_time_unix_nano=at, trace_id=step.trace_id, span_id=step.span_id
    )
    set_value(record.body, text)
    set_value(record.attributes.add(key="tracehouse.chunk.channel").value, channel)
    set_value(record.attributes.add(key="tracehouse.chunk.index").value, index)
    return record


def logs_request(records: list[logs_pb2.LogRecord]) -> otlp_logs.ExportLogsServiceRequest:
    built = otlp_logs.ExportLogsServiceRequest()
    resource_logs = built.resource_logs.add()
    set_value(resource_logs.resource.attributes.add(key="service.name").value, "svc")
    resource_logs.scope_logs.add().log_records.extend(records)
    return built


class Exporter:
    """OTLP/HTTP protobuf exports, as an SDK exporter sends them; each must be acknowledged."""

    def __init__(self, server: RunningServer) -> None:
        self._http = httpx.AsyncClient(base_url=server.http_base, timeout=TIMEOUT)

    async def spans(self, *spans: otlp.Span) -> None:
        body = request(spans).SerializeToString()
        answer = await self._http.post("/v1/traces", content=body, headers=PROTOBUF)
        assert answer.status_code == 200, answer.text
        assert not otlp_trace.ExportTraceServiceResponse.FromString(answer.content).HasField(
            "partial_success"
        )

    async def logs(self, *records: logs_pb2.LogRecord) -> None:
        body = logs_request(list(records)).SerializeToString()
        answer = await self._http.post("/v1/logs", content=body, headers=PROTOBUF)
        assert answer.status_code == 200, answer.text

    async def aclose(self) -> None:
        await self._http.aclose()


@contextlib.asynccontextmanager
async def exporter(server: RunningServer) -> AsyncIterator[Exporter]:
    sender = Exporter(server)
    try:
        yield sender
    finally:
        await sender.aclose()


# The WebSocket client ----------------------------------------------------------


def ws_url(server: RunningServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.ports.api}/api/v1{path}"


def watch(server: RunningServer, path: str, **options: Any) -> connect:
    return connect(ws_url(server, path), open_timeout=TIMEOUT, proxy=None, **options)


async def receive(ws: ClientConnection) -> Message:
    message: Message = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    return message


async def receive_n(ws: ClientConnection, count: int) -> list[Message]:
    return [await receive(ws) for _ in range(count)]


async def receive_until(ws: ClientConnection, kind: str) -> list[Message]:
    """Messages up to and including the first of type `kind`."""
    messages = [await receive(ws)]
    while messages[-1]["type"] != kind:
        messages.append(await receive(ws))
    return messages


async def close_code(ws: ClientConnection) -> int | None:
    """How the server closes the connection, which must be the next thing to happen."""
    try:
        extra = await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed:
        return ws.close_code
    pytest.fail(f"expected the server to close, got {extra!r}")


async def read_to_close(ws: ClientConnection) -> int | None:
    """Read whatever is left until the server closes; how it closed."""
    while True:
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed:
            return ws.close_code


def summary(message: Message) -> tuple[Any, ...]:
    """What a step or text event says, compactly: for comparing sequences."""
    kind = message["type"]
    if kind == "output_delta":
        return (kind, message["step_id"], message["channel"], message["text"])
    if kind == "run_finished":
        return (kind, message["run"]["run_id"], message["run"]["status"])
    return (kind, message["step_id"], message["step"]["status"])


def children(snapshot: Message) -> dict[str, str]:
    """The snapshot's steps below the root: step id → status."""
    return {step["step_id"]: step["status"] for step in snapshot["root"]["children"]}


# 1. A run as it happens --------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_run_is_seen_as_it_happens(dsn: str, transport: str) -> None:
    with running(dsn, live_transport=transport) as server:
        asyncio.run(_a_run_as_it_happens(server))


async def _a_run_as_it_happens(server: RunningServer) -> None:
    run = Run()
    search, chat = run.tool("search", 10, 20), run.llm(30, 60)
    fetch = run.tool("fetch", 70, 80, error="upstream timed out")
    root = run.root(end=100)
    search_id, chat_id, fetch_id = (s.span_id.hex() for s in (search, chat, fetch))
    async with exporter(server) as otlp_http:
        await otlp_http.spans(pending(root), pending(search))
        async with watch(server, f"/runs/{run.run_id}/live") as ws:
            snapshot = await receive(ws)
            assert snapshot["type"] == "snapshot"
            header = snapshot["run"]
            assert (header["run_id"], header["name"], header["status"], header["ended_at"]) == (
                run.run_id, "helper", "running", None,
            )  # fmt: skip
            assert snapshot["root"]["step_id"] == run.run_id
            assert children(snapshot) == {search_id: "running"}
            assert snapshot["streams"] == {}

            await otlp_http.spans(pending(chat))
            started = await receive(ws)
            assert summary(started) == ("step_started", chat_id, "running")
            assert (started["step"]["kind"], started["step"]["model"]) == ("llm", "gpt-4o")

            await otlp_http.spans(search)
            finished = await receive(ws)
            assert summary(finished) == ("step_finished", search_id, "completed")
            assert finished["step"]["ended_at"] is not None

            # Two exports; the second carries its chunks out of index order.
            await otlp_http.logs(
                chunk(chat, "reasoning", 0, "Think"),
                chunk(chat, "reasoning", 1, "ing."),
                chunk(chat, "output", 2, "Hel"),
            )
            await otlp_http.logs(chunk(chat, "output", 4, "!"), chunk(chat, "output", 3, "lo"))
            assert [summary(m) for m in await receive_n(ws, 5)] == [
                ("output_delta", chat_id, "reasoning", "Think"),
                ("output_delta", chat_id, "reasoning", "ing."),
                ("output_delta", chat_id, "output", "Hel"),
                ("output_delta", chat_id, "output", "lo"),
                ("output_delta", chat_id, "output", "!"),
            ]

            await otlp_http.spans(chat)
            assert summary(await receive(ws)) == ("step_finished", chat_id, "completed")

            # Sent without a pending span: it starts and fails at once.
            await otlp_http.spans(fetch)
            appeared, failed = await receive_n(ws, 2)
            assert (appeared["type"], appeared["step_id"]) == ("step_started", fetch_id)
            assert summary(failed) == ("step_failed", fetch_id, "failed")
            assert failed["step"]["error"]["message"] == "upstream timed out"

            await otlp_http.spans(root)
            last = await receive(ws)
            assert last["type"] == "run_finished"
            header = last["run"]
            assert (header["run_id"], header["status"], header["step_count"]) == (
                run.run_id, "completed", 3,
            )  # fmt: skip
            assert header["ended_at"] is not None
            assert header["duration_ms"] == pytest.approx(100.0)
            assert await close_code(ws) == 1000


# 2. A client that connects mid-run ---------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_connecting_mid_run_starts_from_everything_so_far(
    dsn: str, transport: str
) -> None:
    with running(dsn, live_transport=transport) as server:
        asyncio.run(_reconnect_mid_run(server))


async def _reconnect_mid_run(server: RunningServer) -> None:
    run = Run()
    search, chat, fetch = run.tool("search", 10, 20), run.llm(30, 60), run.tool("fetch", 70, 80)
    root = run.root(end=100)
    search_id, chat_id, fetch_id = (s.span_id.hex() for s in (search, chat, fetch))
    path = f"/runs/{run.run_id}/live"
    async with exporter(server) as otlp_http:
        await otlp_http.spans(pending(root), pending(search), pending(chat))
        async with watch(server, path) as first:
            early = [await receive(first)]
            await otlp_http.spans(search)
            early += await receive_n(first, 1)
            await otlp_http.logs(
                chunk(chat, "reasoning", 0, "Hmm. "), chunk(chat, "output", 1, "Hel")
            )
            early += await receive_n(first, 2)
            await otlp_http.logs(chunk(chat, "output", 2, "lo"))
            early += await receive_n(first, 1)

            async with watch(server, path) as second:
                snapshot = await receive(second)
                assert snapshot["type"] == "snapshot"
                assert children(snapshot) == {search_id: "completed", chat_id: "running"}
                assert snapshot["streams"] == {chat_id: {"reasoning": "Hmm. ", "output": "Hello"}}
                assert snapshot["run"]["status"] == "running"

                later: list[list[Message]] = [[], []]

                async def both(count: int) -> None:
                    for seen, ws in zip(later, (first, second), strict=True):
                        seen += await receive_n(ws, count)

                await otlp_http.logs(chunk(chat, "output", 3, ", world"))
                await both(1)
                await otlp_http.spans(chat)
                await both(1)
                await otlp_http.spans(pending(fetch))
                await both(1)
                await otlp_http.logs(chunk(fetch, "output", 0, "fetched"))
                await both(1)
                await otlp_http.spans(fetch, root)
                await both(2)
                assert await close_code(first) == 1000
                assert await close_code(second) == 1000

    from_first, from_second = ([summary(m) for m in seen] for seen in later)
    assert (
        from_first
        == from_second
        == [
            ("output_delta", chat_id, "output", ", world"),
            ("step_finished", chat_id, "completed"),
            ("step_started", fetch_id, "running"),
            ("output_delta", fetch_id, "output", "fetched"),
            ("step_finished", fetch_id, "completed"),
            ("run_finished", run.run_id, "completed"),
        ]
    )
    everything = [summary(m) for m in early[1:]] + from_first
    assert len(everything) == len(set(everything)), everything
    told = "".join(m[3] for m in everything if m[0] == "output_delta" and m[2] == "output")
    assert told == "Hello, worldfetched"


# 3. No gap and no duplicate while spans keep coming ---------------------------


STEPS = 50
BATCH = 5


def _send_steps(base: str, batches: list[tuple[bytes, bytes]], some_sent: threading.Event) -> None:
    """Post each batch's pending spans then its real spans; flag once a few are in."""
    with httpx.Client(base_url=base, timeout=TIMEOUT) as http:
        for i, (pendings, reals) in enumerate(batches):
            for body in (pendings, reals):
                answer = http.post("/v1/traces", content=body, headers=PROTOBUF)
                assert answer.status_code == 200, answer.text
            if i == 1:
                some_sent.set()
            time.sleep(0.01)
    some_sent.set()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_steps_sent_while_a_client_connects_are_each_told_once(dsn: str, transport: str) -> None:
    with running(dsn, live_transport=transport) as server:
        asyncio.run(_connect_while_sending(server))


async def _connect_while_sending(server: RunningServer) -> None:
    run = Run()
    root = run.root(end=10_000)
    steps = [run.tool(f"tool{i}", 10 + i * 10, 15 + i * 10) for i in range(STEPS)]
    ids = {s.span_id.hex() for s in steps}
    batches = [
        (
            request([pending(s) for s in steps[i : i + BATCH]]).SerializeToString(),
            request(steps[i : i + BATCH]).SerializeToString(),
        )
        for i in range(0, STEPS, BATCH)
    ]
    some_sent = threading.Event()
    async with exporter(server) as otlp_http:
        await otlp_http.spans(pending(root))
        sender = asyncio.create_task(
            asyncio.to_thread(_send_steps, server.http_base, batches, some_sent)
        )
        assert await asyncio.to_thread(some_sent.wait, TIMEOUT)
        async with watch(server, f"/runs/{run.run_id}/live") as ws:
            snapshot = await receive(ws)
            events: list[Message] = []
            while not sender.done():  # read while the spans keep coming
                with contextlib.suppress(TimeoutError):
                    events.append(orjson.loads(await asyncio.wait_for(ws.recv(), 0.05)))
            await sender
            await otlp_http.spans(root)
            events += await receive_until(ws, "run_finished")
            assert await close_code(ws) == 1000

    in_snapshot = children(snapshot)
    done_in_snapshot = {step for step, status in in_snapshot.items() if status == "completed"}
    started = [m["step_id"] for m in events if m["type"] == "step_started"]
    finished = [m["step_id"] for m in events if m["type"] == "step_finished"]
    assert not [m for m in events if m["type"] not in ("step_started", "step_finished",
                                                         "run_finished")]  # fmt: skip
    assert Counter(started) == Counter(ids - set(in_snapshot)), "each unseen step starts once"
    assert Counter(finished) == Counter(ids - done_in_snapshot), "each open step ends once"
    assert events[-1]["run"]["step_count"] == STEPS


def test_text_streamed_before_its_step_is_known_is_told_when_the_step_arrives(dsn: str) -> None:
    with running(dsn, live_transport="process") as server:
        asyncio.run(_text_before_its_step(server))


async def _text_before_its_step(server: RunningServer) -> None:
    run = Run()
    chat, root = run.llm(10, 9000), run.root(end=10_000)
    chat_id = chat.span_id.hex()
    async with exporter(server) as otlp_http:
        await otlp_http.spans(pending(root))
        async with watch(server, f"/runs/{run.run_id}/live") as ws:
            assert (await receive(ws))["type"] == "snapshot"
            # The step streams before any span of it is sent (no pending span).
            await otlp_http.logs(chunk(chat, "output", 0, "Once upon"))
            await asyncio.sleep(5.5)
            await otlp_http.logs(chunk(root, "output", 0, "..."))
            assert summary(await receive(ws)) == ("output_delta", run.run_id, "output", "...")
            await otlp_http.spans(chat)
            told = [summary(m) for m in await receive_n(ws, 2)]
    assert told == [
        ("step_started", chat_id, "completed"),
        ("output_delta", chat_id, "output", "Once upon"),
    ]


# 4. A finished run -------------------------------------------------------------


def test_a_finished_run_answers_its_snapshot_then_run_finished_and_closes(dsn: str) -> None:
    with running(dsn) as server:
        asyncio.run(_finished_run(server))


async def _finished_run(server: RunningServer) -> None:
    run = Run()
    tool = run.tool("search", 10, 20)
    async with exporter(server) as otlp_http:
        await otlp_http.spans(tool, run.root(end=50))
        await otlp_http.logs(chunk(tool, "output", 0, "found it"))
        # By trace id, which answers the trace's root run.
        async with watch(server, f"/runs/{run.trace.hex()}/live") as ws:
            snapshot, finished = await receive_n(ws, 2)
            assert await close_code(ws) == 1000
    assert snapshot["type"] == "snapshot"
    assert (snapshot["run"]["run_id"], snapshot["run"]["status"]) == (run.run_id, "completed")
    assert children(snapshot) == {tool.span_id.hex(): "completed"}
    assert snapshot["streams"] == {tool.span_id.hex(): {"output": "found it"}}
    assert finished == {"type": "run_finished", "run": snapshot["run"]}


# 5. Refused handshakes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/runs/0123456789abcdef/live", 404),
        ("/runs/0123456789abcdef0123456789abcdef/live", 404),
        ("/runs/not-a-run/live", 422),
        ("/runs/0123456789ABCDEFF/live", 422),
        ("/live?status=sleeping", 422),
    ],
)
def test_a_bad_or_unknown_run_is_refused_at_the_handshake(
    server: RunningServer, path: str, status: int
) -> None:
    async def connecting() -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with watch(server, path):
                pass
        response = refused.value.response
        assert response.status_code == status
        code = {404: "not_found", 422: "invalid_request"}[status]
        assert orjson.loads(response.body)["error"]["code"] == code

    asyncio.run(connecting())


def test_a_step_that_is_not_a_run_is_refused_like_an_unknown_run(server: RunningServer) -> None:
    async def connecting() -> None:
        run = Run()
        tool = run.tool("search", 10, 20)
        async with (
            exporter(server) as otlp_http,
            httpx.AsyncClient(base_url=server.api_base, timeout=TIMEOUT) as api,
        ):
            await otlp_http.spans(pending(run.root()), tool)
            header = await api.get(f"/api/v1/runs/{tool.span_id.hex()}")
            assert header.status_code == 404
            with pytest.raises(InvalidStatus) as refused:
                async with watch(server, f"/runs/{tool.span_id.hex()}/live") as ws:
                    pytest.fail(f"accepted; first message: {await ws.recv()!r}")
            assert refused.value.response.status_code == 404

    asyncio.run(connecting())


# 6. A slow client --------------------------------------------------------------


def _unread_socket(server: RunningServer) -> socket.socket:
    """A connected socket whose small receive window fills at once if nobody reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.ports.api))
    sock.setblocking(False)
    return sock


def test_a_client_that_stops_reading_is_dropped_and_ingest_goes_on(dsn: str) -> None:
    with running(dsn, live_buffer_messages=5) as server:
        asyncio.run(_slow_client(server))


async def _slow_client(server: RunningServer) -> None:
    run = Run()
    steps = [run.tool(f"tool{i}-" + "x" * 2000, 10 + i, 11 + i) for i in range(100)]
    async with exporter(server) as otlp_http:
        await otlp_http.spans(pending(run.root()))
        options = {"sock": _unread_socket(server), "max_queue": 1, "compression": None}
        async with watch(server, f"/runs/{run.run_id}/live", **options) as ws:
            slowest = 0.0
            for i in range(0, len(steps), 20):
                began = time.monotonic()
                await otlp_http.spans(*(pending(s) for s in steps[i : i + 20]))
                await otlp_http.spans(*steps[i : i + 20])
                slowest = max(slowest, time.monotonic() - began)
            # Well under the exporter's timeout: ingest never waits on a WebSocket client.
            assert slowest < TIMEOUT / 2, f"an export waited {slowest:.2f} s"
            # What was sent before the server gave up on this client, then the close.
            assert await read_to_close(ws) == 1008
    async with httpx.AsyncClient(base_url=server.api_base, timeout=TIMEOUT) as api:
        header = (await api.get(f"/api/v1/runs/{run.run_id}")).json()
        assert (header["status"], header["step_count"]) == ("running", len(steps))
        tree = (await api.get(f"/api/v1/runs/{run.run_id}/tree")).json()
        assert {s["step_id"] for s in tree["root"]["children"]} == {s.span_id.hex() for s in steps}


# 7. The run list as it changes -------------------------------------------------


def run_event(message: Message) -> tuple[str, str, str]:
    return (message["type"], message["run"]["name"], message["run"]["status"])


class ListWatcher:
    """A client of `/api/v1/live` that, like a UI, read the run list just before listening.

    A `run_updated` that only repeats a header the list already showed is
    no news; it is skipped (the ClickHouse tail's first look reaches back a
    few seconds, so it may re-tell a run written just before the client came).
    """

    def __init__(self, ws: ClientConnection, listed: list[Message]) -> None:
        self.ws = ws
        self._listed = {run["run_id"]: run for run in listed}

    async def news(self, count: int) -> list[Message]:
        found: list[Message] = []
        while len(found) < count:
            message = await receive(self.ws)
            run = message["run"]
            if message["type"] == "run_updated" and self._listed.get(run["run_id"]) == run:
                continue
            found.append(message)
        return found


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_run_list_tells_of_runs_starting_changing_and_ending(dsn: str, transport: str) -> None:
    with running(dsn, live_transport=transport) as server:
        asyncio.run(_run_list(server))


async def _run_list(server: RunningServer) -> None:
    early = Run("early", origin_ns=time.time_ns() - 1_000_000_000)
    async with (
        exporter(server) as otlp_http,
        httpx.AsyncClient(base_url=server.api_base, timeout=TIMEOUT) as api,
    ):
        await otlp_http.spans(pending(early.root()))
        listed = (await api.get("/api/v1/runs")).json()["runs"]
        assert [(r["name"], r["status"]) for r in listed] == [("early", "running")]
        async with (
            watch(server, "/live") as every_ws,
            watch(server, "/live?name=other") as others_ws,
            watch(server, "/live?status=failed") as failures_ws,
        ):
            every, others, failures = (
                ListWatcher(ws, listed) for ws in (every_ws, others_ws, failures_ws)
            )
            await asyncio.sleep(0.2)  # the server starts each session's clock on accepting
            helper = Run("helper")
            await otlp_http.spans(pending(helper.root()))
            [started] = await every.news(1)
            assert run_event(started) == ("run_started", "helper", "running")
            assert started["run"]["run_id"] == helper.run_id

            await otlp_http.spans(pending(early.tool("search", 10, 20)))
            [updated] = await every.news(1)
            assert run_event(updated) == ("run_updated", "early", "running")
            assert updated["run"]["step_count"] == 1

            await otlp_http.spans(helper.root(end=300))
            [finished] = await every.news(1)
            assert run_event(finished) == ("run_finished", "helper", "completed")
            assert finished["run"]["ended_at"] is not None

            broken = Run("broken")
            await otlp_http.spans(broken.root(end=10, error="out of budget"))
            told = await every.news(2)
            assert [run_event(m) for m in told] == [
                ("run_started", "broken", "failed"), ("run_finished", "broken", "failed"),
            ]  # fmt: skip
            assert told[1]["run"]["error"]["message"] == "out of budget"
            assert await failures.news(2) == told

            # The last run is named `other`: its filter saw nothing before it.
            other = Run("other")
            await otlp_http.spans(other.root(end=10))
            assert [run_event(m) for m in await others.news(2)] == [
                ("run_started", "other", "completed"), ("run_finished", "other", "completed"),
            ]  # fmt: skip


RUNS = 30


def test_the_clickhouse_tail_tells_of_every_run_that_finishes(dsn: str) -> None:
    with running(dsn, live_transport="clickhouse", live_poll_ms=2.0) as server:
        asyncio.run(_every_run_finishes(server))


async def _every_run_finishes(server: RunningServer) -> None:
    names = {f"run{i}" for i in range(RUNS)}
    async with exporter(server) as otlp_http, watch(server, "/live") as ws:
        await asyncio.sleep(0.2)  # the server starts the session's clock on accepting
        for name in sorted(names):
            await otlp_http.spans(Run(name).root(end=10))  # a whole run in one export
        finished: set[str] = set()
        with contextlib.suppress(TimeoutError):
            while finished != names:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 2.0))
                if message["type"] == "run_finished":
                    finished.add(message["run"]["name"])
    assert sorted(names - finished) == [], f"{len(names - finished)} of {RUNS} never finished"


# 8. A run that went quiet ------------------------------------------------------


STALE_AFTER_S = 1.0


def test_a_running_run_with_nothing_new_is_flagged_stale(dsn: str) -> None:
    with (
        running(dsn, stale_after_s=STALE_AFTER_S) as server,
        httpx.Client(timeout=TIMEOUT) as http,
    ):
        run = Run()
        body = request([pending(run.root())]).SerializeToString()
        sent = http.post(f"{server.http_base}/v1/traces", content=body, headers=PROTOBUF)
        acknowledged = time.monotonic()
        assert sent.status_code == 200
        url = f"{server.api_base}/api/v1/runs/{run.run_id}"
        fresh = http.get(url).json()
        if time.monotonic() - acknowledged < STALE_AFTER_S:  # not so on a machine this busy
            assert (fresh["status"], fresh["stale"]) == ("running", False)
        time.sleep(STALE_AFTER_S + 0.2)
        header = http.get(url).json()
        assert (header["status"], header["stale"], header["ended_at"]) == ("running", True, None)
        listed = http.get(f"{server.api_base}/api/v1/runs").json()["runs"]
        assert [(r["run_id"], r["status"], r["stale"]) for r in listed] == [
            (run.run_id, "running", True)
        ]


# 9. Step detail: streamed text and linked log records --------------------------


def test_a_steps_detail_joins_its_chunks_and_lists_its_log_records(dsn: str) -> None:
    with running(dsn) as server:
        run = Run()
        chat = run.llm(10, 90)
        choice = logs_pb2.LogRecord(
            time_unix_nano=chat.end_time_unix_nano,
            trace_id=chat.trace_id,
            span_id=chat.span_id,
            event_name="gen_ai.choice",
        )
        set_value(choice.body, {"index": 0, "message": {"role": "assistant", "content": "Hi!"}})
        records = [
            chunk(chat, "output", 1, "Hi"), chunk(chat, "reasoning", 0, "Greet."),
            chunk(chat, "output", 2, "!"), choice,
        ]  # fmt: skip
        body = request([chat, run.root(end=100)]).SerializeToString()
        sent = httpx.post(f"{server.http_base}/v1/traces", content=body, headers=PROTOBUF)
        assert sent.status_code == 200
        with grpc.insecure_channel(server.grpc_endpoint) as channel:
            export = channel.unary_unary(
                LOGS_EXPORT,
                request_serializer=otlp_logs.ExportLogsServiceRequest.SerializeToString,
                response_deserializer=otlp_logs.ExportLogsServiceResponse.FromString,
            )
            answer = export(logs_request(records), timeout=TIMEOUT)
            assert not answer.HasField("partial_success")

        url = f"{server.api_base}/api/v1/runs/{run.run_id}/steps/{chat.span_id.hex()}"
        detail = httpx.get(url, timeout=TIMEOUT).json()
    assert (detail["step_id"], detail["kind"], detail["status"]) == (
        chat.span_id.hex(), "llm", "completed",
    )  # fmt: skip
    assert detail["streams"] == {"output": "Hi!", "reasoning": "Greet."}
    [event] = [e for e in detail["events"] if e["name"] == "gen_ai.choice"]
    assert event["body"] == {"index": 0, "message": {"role": "assistant", "content": "Hi!"}}
    assert len(detail["events"]) == 1, "chunks are the streams, not events"

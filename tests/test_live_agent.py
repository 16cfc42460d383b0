"""Watching a real agent live: pydantic-ai with the client helper, a real WebSocket client.

The agent runs on pydantic-ai's FunctionModel in a thread; its tools and
model turns wait on events this test sets, so each assertion is made while
the agent is provably still in the middle of what is being observed. Spans
go out through the client helper's LiveSpanProcessor over OTLP/gRPC, text
chunks through its TextStream over OTLP/HTTP logs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import websockets
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from conftest import RunningServer
from tracehouse.client import LiveSpanProcessor, TextStream

WAIT = 15.0  # seconds any one expected message may take before the test fails


class Gates:
    """Events the test opens to let the agent go on."""

    def __init__(self) -> None:
        self.lookup = threading.Event()  # the lookup tool may return
        self.answer = threading.Event()  # the model may give its final answer
        self.check_calls = 0


class LiveAgent:
    def __init__(self, server: RunningServer) -> None:
        resource = Resource.create({"service.name": "live-agent"})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            LiveSpanProcessor(OTLPSpanExporter(endpoint=server.grpc_endpoint, insecure=True))
        )
        self.stream = TextStream(
            OTLPLogExporter(endpoint=f"{server.http_base}/v1/logs"), resource=resource
        )
        self.gates = Gates()

    def agent(self) -> Agent[None, str]:
        gates, stream = self.gates, self.stream

        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            last = messages[-1].parts[-1]
            if not isinstance(last, ToolReturnPart):
                if getattr(last, "tool_name", "") == "check":  # the retry prompt
                    return ModelResponse(parts=[ToolCallPart("check", {"n": 2})])
                stream.write("I should look this up.", channel="reasoning")
                return ModelResponse(parts=[ToolCallPart("lookup", {"topic": "tides"})])
            if last.tool_name == "lookup":
                return ModelResponse(parts=[ToolCallPart("check", {"n": 1})])
            assert gates.answer.wait(WAIT)
            for chunk in ("Tides are ", "caused by ", "the moon."):
                stream.write(chunk)
            return ModelResponse(parts=[TextPart("Tides are caused by the moon.")])

        def lookup(topic: str) -> str:
            assert gates.lookup.wait(WAIT)
            return f"{topic}: the moon's pull"

        def check(n: int) -> str:
            gates.check_calls += 1
            if n == 1:
                raise ModelRetry("not yet, try n=2")
            return "checked"

        settings = InstrumentationSettings(tracer_provider=self.provider)
        return Agent(
            FunctionModel(respond, model_name="fn-live"),
            name="tide_agent",
            tools=[lookup, check],
            capabilities=[Instrumentation(settings=settings)],
        )

    def close(self) -> None:
        self.provider.shutdown()
        self.stream.shutdown()


@pytest.fixture
def live_agent(server: RunningServer) -> Iterator[LiveAgent]:
    agent = LiveAgent(server)
    yield agent
    agent.gates.lookup.set()
    agent.gates.answer.set()
    agent.close()


class Socket:
    """A WebSocket client that keeps every message it received."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.messages: list[dict[str, Any]] = []
        self.steps: dict[str, dict[str, Any]] = {}  # by id, as last told

    def _track(self, message: dict[str, Any]) -> None:
        if message["type"] == "snapshot":
            self.steps.update((s["step_id"], s) for s in _walk(message["root"]))
        elif "step" in message:
            self.steps[message["step_id"]] = message["step"]

    async def next(self) -> dict[str, Any]:
        message: dict[str, Any] = orjson.loads(
            await asyncio.wait_for(self._connection.recv(), WAIT)
        )
        self.messages.append(message)
        self._track(message)
        return message

    async def until_step(self, name: str, status: str) -> dict[str, Any]:
        """The step named `name` once it has been told to have `status` (maybe already)."""
        while True:
            for step in self.steps.values():
                if (step["name"], step["status"]) == (name, status):
                    return step
            await self.next()

    async def until(self, **wanted: Any) -> dict[str, Any]:
        """Read on until a message has these fields (`name` matches the step's name)."""
        while True:
            message = await self.next()
            step = message.get("step") or {}
            if all(
                step.get("name") == value if key == "name" else message.get(key) == value
                for key, value in wanted.items()
            ):
                return message


@asynccontextmanager
async def socket(server: RunningServer, path: str) -> AsyncIterator[Socket]:
    url = server.api_base.replace("http://", "ws://") + path
    async with websockets.connect(url) as connection:
        yield Socket(connection)


def test_a_pydantic_ai_run_is_watched_live_from_start_to_finish(
    server: RunningServer, live_agent: LiveAgent
) -> None:
    asyncio.run(watch_a_run(server, live_agent))


async def watch_a_run(server: RunningServer, live_agent: LiveAgent) -> None:
    gates = live_agent.gates
    async with socket(server, "/api/v1/live") as runs:
        worker = asyncio.create_task(
            asyncio.to_thread(live_agent.agent().run_sync, "What causes tides?")
        )
        started = await runs.until(type="run_started")
        assert (started["run"]["name"], started["run"]["status"]) == ("tide_agent", "running")
        run_id = started["run"]["run_id"]

        async with socket(server, f"/api/v1/runs/{run_id}/live") as live:
            snapshot = await live.next()
            assert snapshot["type"] == "snapshot"
            assert snapshot["run"]["status"] == "running"

            # The lookup tool is called and has not returned: it shows as started.
            lookup = await live.until_step("lookup", "running")
            assert lookup["kind"] == "tool"
            assert lookup["ended_at"] is None
            assert not gates.lookup.is_set()

            # Someone opening the run now sees everything so far, reasoning included.
            async with socket(server, f"/api/v1/runs/{run_id}/live") as late:
                seen = await late.next()
                assert seen["type"] == "snapshot"
                steps = {s["name"]: s["status"] for s in _walk(seen["root"])}
                assert steps["lookup"] == "running"
                assert "I should look this up." in [
                    text for channels in seen["streams"].values() for text in channels.values()
                ]

            gates.lookup.set()
            done = await live.until(type="step_finished", step_id=lookup["step_id"])
            assert done["step"]["name"] == "lookup"
            assert done["step"]["status"] == "completed"
            assert done["step"]["ended_at"] is not None

            # The check tool fails (the model is told to retry); that shows at once,
            # while the model is still held before its answer.
            failed = await live.until(type="step_failed", name="check")
            assert failed["step"]["error"]["message"] == "not yet, try n=2"
            assert not gates.answer.is_set()

            gates.answer.set()
            finished = await live.until(type="run_finished")
            header = finished["run"]
            assert (header["status"], header["name"]) == ("completed", "tide_agent")
            assert header["output_preview"] == "Tides are caused by the moon."
            assert header["ended_at"] is not None
            await asyncio.wait_for(worker, WAIT)

        # Every chunk reached the client once, in order: in the snapshot's
        # streams (sent before it connected) or as an output_delta.
        told = [
            (step_id, channel, text)
            for step_id, channels in live.messages[0]["streams"].items()
            for channel, text in channels.items()
        ] + [
            (m["step_id"], m["channel"], m["text"])
            for m in live.messages
            if m["type"] == "output_delta"
        ]
        assert [(channel, text) for _, channel, text in told] == [
            ("reasoning", "I should look this up."),
            ("output", "Tides are "),
            ("output", "caused by "),
            ("output", "the moon."),
        ]
        # Each chunk belongs to the model call that generated it.
        assert {live.steps[step_id]["kind"] for step_id, _, _ in told} == {"llm"}
        _assert_each_step_told_once(live.messages)
        await runs.until(type="run_finished")


def _walk(step: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield step
    for child in step.get("children") or ():
        yield from _walk(child)


def _assert_each_step_told_once(messages: list[dict[str, Any]]) -> None:
    """No step starts twice or ends twice, and every step that ended had started."""
    known = {s["step_id"] for s in _walk(messages[0]["root"])}
    ended = {s["step_id"] for s in _walk(messages[0]["root"]) if s["status"] != "running"}
    for message in messages[1:]:
        step_id = message.get("step_id")
        if message["type"] == "step_started":
            assert step_id not in known, f"started twice: {message}"
            known.add(step_id)
        elif message["type"] in ("step_finished", "step_failed"):
            assert step_id in known, f"ended before it started: {message}"
            assert step_id not in ended, f"ended twice: {message}"
            ended.add(step_id)

"""Every captured framework trace becomes the runs, steps and sub-runs its README describes.

The captures in tests/fixtures/otlp are real exports of pydantic-ai,
LangGraph + OpenInference, OpenLLMetry and the Vercel AI SDK. Each is sent
through the running collector (as protobuf, and again as OTLP/JSON into a
second database) and read back as headers and trees.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from clickhouse_connect.driver.client import Client

from conftest import FIXTURES, RunningServer, render, server_settings, shape
from tracehouse.query_api.assembly import RunHeader, Step
from tracehouse.query_api.runs import trace_tree
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client

EXPECTED: dict[str, str] = {
    "pydantic_ai/ok": """
agent weather_agent completed
  llm chat fake-weather-model completed
  tool get_weather completed
  llm chat fake-weather-model completed""",
    "pydantic_ai/failed": """
agent failing_agent failed
  llm chat fake-broken-model failed""",
    "pydantic_ai/nested": """
agent orchestrator_agent completed
  llm chat fake-orchestrator-model completed
  tool delegate_research completed
    agent research_agent completed (sub-run)
      llm chat fake-research-model completed
      tool search_web completed
      llm chat fake-research-model completed
  llm chat fake-orchestrator-model completed""",
    "pydantic_ai/streaming": """
agent streaming_agent completed
  llm chat fake-stream-model completed
  tool get_weather completed
  llm chat fake-stream-model completed""",
    "pydantic_ai/tool_error_fatal": """
agent weather_agent failed
  llm chat fake-weather-model completed
  tool get_weather failed""",
    "pydantic_ai/tool_error_recovered": """
agent weather_agent completed
  llm chat fake-weather-model completed
  tool get_weather failed
  llm chat fake-weather-model completed""",
    "langgraph/ok": """
agent weather_agent completed
  node agent completed
    llm FakeToolChatModel completed
  node tools completed
    tool get_weather completed
  node agent completed
    llm FakeToolChatModel completed""",
    "langgraph/failed": """
agent weather_agent failed
  node agent failed
    llm FakeToolChatModel failed""",
    "langgraph/nested": """
agent orchestrator_agent completed
  node agent completed
    llm FakeToolChatModel completed
  node tools completed
    tool delegate_research completed
      agent research_agent completed (sub-run)
        node agent completed
          llm FakeToolChatModel completed
        node tools completed
          tool search_web completed
        node agent completed
          llm FakeToolChatModel completed
  node agent completed
    llm FakeToolChatModel completed""",
    "langgraph/nested_subgraph": """
chain parent_workflow completed
  node plan completed
  node research completed
    workflow research_subgraph completed (sub-run)
      node lookup completed
      node format completed""",
    "langgraph/tool_error_fatal": """
agent weather_agent failed
  node agent completed
    llm FakeToolChatModel completed
  node tools failed
    tool get_weather failed""",
    "langgraph/tool_error_recovered": """
agent weather_agent completed
  node agent completed
    llm FakeToolChatModel completed
  node tools completed
    tool get_weather failed
  node agent completed
    llm FakeToolChatModel completed""",
    "traceloop/ok": """
agent weather_agent completed
  llm FakeToolChatModel.chat completed
    tool get_weather completed
    llm FakeToolChatModel.chat completed""",
    "traceloop/failed": """
workflow weather_workflow failed
  agent weather_agent failed (sub-run)
    llm FakeToolChatModel.chat failed""",
    "traceloop/nested": """
workflow trip_planner completed
  agent orchestrator_agent completed (sub-run)
    llm FakeToolChatModel.chat completed
      tool delegate_research completed
        agent research_agent completed (sub-run)
          llm FakeToolChatModel.chat completed
            tool search_web completed
            llm FakeToolChatModel.chat completed
      llm FakeToolChatModel.chat completed
  workflow report_workflow completed (sub-run)""",
    "traceloop/streaming": """
agent streaming_agent completed
  llm FakeToolChatModel.chat completed
    tool get_weather completed
    llm FakeToolChatModel.chat completed""",
    "traceloop/tool_error_fatal": """
agent weather_agent failed
  llm FakeToolChatModel.chat completed
    tool get_weather failed""",
    "traceloop/tool_error_recovered": """
agent weather_agent completed
  llm FakeToolChatModel.chat completed
    tool get_weather failed
    llm FakeToolChatModel.chat completed""",
    "vercel_ai/ok": """
agent weather-agent completed
  llm ai.generateText.doGenerate completed
  tool getWeather completed
  llm ai.generateText.doGenerate completed""",
    "vercel_ai/failed": """
agent weather-agent failed
  llm ai.generateText.doGenerate completed
  tool getWeather completed
  llm ai.generateText.doGenerate failed""",
    "vercel_ai/nested": """
agent orchestrator-agent completed
  llm ai.generateText.doGenerate completed
  tool research completed
    agent research-subagent completed (sub-run)
      llm ai.generateText.doGenerate completed
      tool searchWeb completed
      llm ai.generateText.doGenerate completed
  llm ai.generateText.doGenerate completed""",
    "vercel_ai/streaming": """
agent weather-agent-stream completed
  llm ai.streamText.doStream completed
    tool getWeather completed
  llm ai.streamText.doStream completed""",
    "vercel_ai/tool_error": """
agent weather-agent completed
  llm ai.generateText.doGenerate completed
  tool getWeather failed
  llm ai.generateText.doGenerate completed""",
}

# (steps below the run, input, output, total tokens, model, error type, error message)
HEADERS: dict[str, tuple[int, int, int, int, str, str, str]] = {
    "pydantic_ai/ok": (3, 114, 18, 132, "fake-weather-model", "", ""),
    "pydantic_ai/failed": (1, 0, 0, 0, "fake-broken-model", "RuntimeError",
                           "RuntimeError: model backend unavailable (simulated)"),
    "pydantic_ai/nested": (7, 238, 55, 293, "fake-orchestrator-model", "", ""),
    "pydantic_ai/tool_error_fatal": (2, 56, 5, 61, "fake-weather-model", "ValueError",
                                     "ValueError: weather service crashed for Paris"),
    "pydantic_ai/tool_error_recovered": (3, 123, 20, 143, "fake-weather-model", "", ""),
    "langgraph/failed": (5, 0, 0, 0, "", "RuntimeError", "model backend unavailable (simulated)"),
    "langgraph/nested": (29, 0, 0, 0, "", "", ""),
    "langgraph/tool_error_fatal": (8, 0, 0, 0, "", "ValueError",
                                   "weather service crashed for Paris"),
    "traceloop/failed": (3, 0, 0, 0, "", "RuntimeError", "model backend unavailable (simulated)"),
    "traceloop/nested": (10, 0, 0, 0, "", "", ""),
    # The AI SDK's run span repeats its steps' totals: they are not added again.
    "vercel_ai/ok": (3, 50, 15, 65, "mock-model-id", "", ""),
    "vercel_ai/nested": (7, 100, 30, 130, "mock-orchestrator-model", "", ""),
    "vercel_ai/failed": (3, 20, 5, 25, "mock-model-id", "Error",
                         "model backend unavailable (simulated)"),
}  # fmt: skip

_databases = itertools.count()


def trace_id_of(fixture: str) -> str:
    document = orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())
    return str(document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"])


class Ingested:
    def __init__(self, chdb_dir: Path, suffix: str) -> None:
        self.dsn = f"chdb://{chdb_dir}?database=fixture_runs_{next(_databases)}"
        self.server = RunningServer(server_settings(self.dsn)).start()
        self.client: Client = open_client(self.dsn)
        self.store = Store(self.client)
        for fixture in EXPECTED:
            body = (FIXTURES / f"{fixture}{suffix}").read_bytes()
            media = "application/json" if suffix == ".json" else "application/x-protobuf"
            response = httpx.post(
                f"{self.server.http_base}/v1/traces", content=body, headers={"Content-Type": media}
            )
            assert response.status_code == 200, response.text

    def close(self) -> None:
        self.server.stop()
        self.client.close()


@pytest.fixture(scope="module")
def protobuf(chdb_dir: Path) -> Iterator[Ingested]:
    ingested = Ingested(chdb_dir, ".pb")
    yield ingested
    ingested.close()


@pytest.fixture(scope="module")
def json_ingested(chdb_dir: Path) -> Iterator[Ingested]:
    ingested = Ingested(chdb_dir, ".json")
    yield ingested
    ingested.close()


def tree_of(ingested: Ingested, fixture: str) -> tuple[RunHeader, Step]:
    found = trace_tree(ingested.store, "default", trace_id_of(fixture))
    assert found is not None, fixture
    return found.run, found.root


@pytest.mark.parametrize("fixture", EXPECTED)
def test_fixture_becomes_the_expected_runs_and_steps(protobuf: Ingested, fixture: str) -> None:
    run, root = tree_of(protobuf, fixture)
    assert shape(root) == EXPECTED[fixture].strip()
    assert run.status == root.row.status
    assert run.trigger == "unknown"
    assert run.parent_run_id is None
    assert run.ended_ns is not None
    assert run.input_preview


@pytest.mark.parametrize("fixture", HEADERS)
def test_run_header_counts_steps_and_sums_llm_tokens(protobuf: Ingested, fixture: str) -> None:
    run, _ = tree_of(protobuf, fixture)
    steps, input_tokens, output_tokens, total, model, error_type, error_message = HEADERS[fixture]
    assert run.step_count == steps
    assert (run.tokens.input, run.tokens.output, run.tokens.total) == (
        input_tokens,
        output_tokens,
        total,
    )
    assert run.model == model
    if error_type:
        assert run.error is not None
        assert (run.error.type, run.error.message) == (error_type, error_message)
    else:
        assert run.error is None


@pytest.mark.parametrize("fixture", EXPECTED)
def test_otlp_json_gives_the_same_runs_as_protobuf(
    protobuf: Ingested, json_ingested: Ingested, fixture: str
) -> None:
    from_protobuf = tree_of(protobuf, fixture)
    from_json = tree_of(json_ingested, fixture)
    assert from_json[0] == from_protobuf[0]
    assert list(render(from_json[1])) == list(render(from_protobuf[1]))


def test_sub_runs_have_headers_of_their_own(protobuf: Ingested) -> None:
    run, root = tree_of(protobuf, "pydantic_ai/nested")
    tool = root.children[1]
    research = tool.children[0]
    assert research.run is not None
    sub = research.run
    assert (sub.name, sub.kind, sub.status) == ("research_agent", "agent", "completed")
    assert sub.parent_run_id == run.run_id
    assert sub.trigger == "subagent"
    assert sub.step_count == 3
    assert sub.tokens.total == 63 + 77
    assert sub.model == "fake-research-model"
    assert "Eiffel" in sub.input_preview
    assert "330" in sub.output_preview


def test_tool_steps_carry_args_and_result(protobuf: Ingested) -> None:
    rows = protobuf.store.trace_rows("default", trace_id_of("pydantic_ai/ok"))
    tool = next(r for r in rows if r.kind == "tool")
    assert orjson.loads(tool.input_preview) == {"city": "Paris"}
    assert tool.output_preview == "sunny, 21C"
    failed = next(
        r
        for r in protobuf.store.trace_rows("default", trace_id_of("pydantic_ai/tool_error_fatal"))
        if r.kind == "tool"
    )
    # A failed tool's result is its error.
    assert failed.output_preview == "weather service crashed for Paris"
    assert failed.error_type == "ValueError"

"""Real agent frameworks, run offline, exported by real OTLP exporters, read back as runs.

pydantic-ai (its own instrumentation, over OTLP/gRPC) and LangGraph (through
OpenInference's LangChain instrumentor, over OTLP/HTTP protobuf) run on the
test models they ship with against the running collector; each run is then
read back as the query API assembles it: header, step tree and sub-runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson
import pytest
from clickhouse_connect.driver.client import Client
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.capabilities import Instrumentation
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel

from conftest import RunningServer, shape
from tracehouse.query_api.assembly import RunHeader, Step, Tokens
from tracehouse.query_api.runs import RunTree, run_step, trace_tree
from tracehouse.query_api.store import Store

# create_react_agent works in LangGraph 1.x but points to `langchain.agents`,
# which is not installed here.
REACT_AGENT_MOVED = pytest.mark.filterwarnings(
    "ignore:create_react_agent has been moved:DeprecationWarning"
)


class Traced(NamedTuple):
    """An SDK provider exporting to the server, and a copy of every span it ended."""

    provider: TracerProvider
    memory: InMemorySpanExporter


def traced(exporter: SpanExporter) -> Traced:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "framework-tests"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return Traced(provider, memory)


@pytest.fixture
def grpc_traced(server: RunningServer) -> Iterator[Traced]:
    tracing = traced(GrpcExporter(endpoint=server.grpc_endpoint, insecure=True))
    yield tracing
    tracing.provider.shutdown()


@pytest.fixture
def langchain_traced(server: RunningServer) -> Iterator[Traced]:
    tracing = traced(HttpExporter(endpoint=f"{server.http_base}/v1/traces"))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=tracing.provider)
    yield tracing
    instrumentor.uninstrument()
    tracing.provider.shutdown()


def read_back(tracing: Traced, db: Client) -> RunTree:
    """Flush the exporter, then the one trace it sent, as the query API assembles it."""
    assert tracing.provider.force_flush(10_000)
    trace_ids = {f"{span.context.trace_id:032x}" for span in tracing.memory.get_finished_spans()}
    assert len(trace_ids) == 1, trace_ids
    found = trace_tree(Store(db), "default", trace_ids.pop())
    assert found is not None
    return found


def stored_output(db: Client, run: RunHeader) -> Any:
    """A run's whole output as the step detail answers it (previews cut it at 512 characters)."""
    found = run_step(Store(db), "default", run.run_id, run.run_id)
    assert found is not None
    return orjson.loads(found[1]["Output"])


def walk(step: Step) -> Iterator[Step]:
    yield step
    for child in step.children:
        yield from walk(child)


def named(step: Step, name: str) -> Step:
    """The one step of this name below `step`."""
    (found,) = (s for s in walk(step) if s.row.name == name)
    return found


def research_sub_run(root: Step, run: RunHeader) -> tuple[Step, RunHeader]:
    """The `research_agent` sub-run under the `delegate_research` tool, checked as one."""
    sub_step = named(root, "delegate_research").children[0]
    sub = sub_step.run
    assert sub is not None
    assert (sub.name, sub.kind, sub.status, sub.error) == (
        "research_agent",
        "agent",
        "completed",
        None,
    )
    assert (sub.parent_run_id, sub.trigger) == (run.run_id, "subagent")
    return sub_step, sub


def llm_tokens(step: Step) -> Tokens:
    """What the LLM steps below `step` report, summed."""
    return sum((s.row.tokens for s in walk(step) if s.row.kind == "llm"), Tokens())


# pydantic-ai


def pydantic_agent(
    model: Model, name: str, tracing: Traced, tools: Sequence[Any]
) -> Agent[None, str]:
    settings = InstrumentationSettings(tracer_provider=tracing.provider)
    return Agent(model, name=name, tools=tools, capabilities=[Instrumentation(settings=settings)])


def calls_tool(tool_name: str, args: dict[str, Any], model_name: str) -> FunctionModel:
    """A model that calls a tool until it succeeds, then answers with what it returned."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1].parts[-1]
        if isinstance(last, ToolReturnPart) and last.outcome == "success":
            return ModelResponse(parts=[TextPart(f"answer: {last.content}")])
        return ModelResponse(parts=[ToolCallPart(tool_name, args)])

    return FunctionModel(respond, model_name=model_name)


def test_pydantic_ai_tool_call_is_a_run_of_llm_tool_llm(grpc_traced: Traced, db: Client) -> None:
    cities: list[str] = []

    def get_weather(city: str) -> str:
        cities.append(city)
        return f"sunny in {city}"

    agent = pydantic_agent(TestModel(), "weather_agent", grpc_traced, [get_weather])
    result = agent.run_sync("What is the weather in Paris?")

    run, root = read_back(grpc_traced, db)
    assert shape(root) == (
        "agent weather_agent completed\n"
        "  llm chat test completed\n"
        "  tool get_weather completed\n"
        "  llm chat test completed"
    )
    assert (run.name, run.kind, run.status, run.error) == (
        "weather_agent",
        "agent",
        "completed",
        None,
    )
    assert (run.parent_run_id, run.trigger, run.service) == (None, "unknown", "framework-tests")
    assert run.step_count == 3
    assert run.model == "test"
    assert all(s.row.model == "test" for s in root.children if s.row.kind == "llm")
    usage = result.usage
    assert run.tokens == llm_tokens(root)
    assert (run.tokens.input, run.tokens.output) == (usage.input_tokens, usage.output_tokens)
    assert run.tokens.total == usage.input_tokens + usage.output_tokens
    assert "What is the weather in Paris?" in run.input_preview
    assert run.output_preview == result.output
    tool_step = named(root, "get_weather")
    assert orjson.loads(tool_step.row.input_preview) == {"city": cities[0]}
    assert tool_step.row.output_preview == f"sunny in {cities[0]}"


def test_pydantic_ai_tool_retried_by_the_model_fails_its_step_not_the_run(
    grpc_traced: Traced, db: Client
) -> None:
    attempts: list[str] = []

    def get_weather(city: str) -> str:
        attempts.append(city)
        if len(attempts) == 1:
            raise ModelRetry("weather service busy, try again")
        return f"sunny in {city}"

    model = calls_tool("get_weather", {"city": "Paris"}, "fake-weather-model")
    agent = pydantic_agent(model, "weather_agent", grpc_traced, [get_weather])
    assert agent.run_sync("Weather in Paris?").output == "answer: sunny in Paris"

    run, root = read_back(grpc_traced, db)
    assert shape(root) == (
        "agent weather_agent completed\n"
        "  llm chat fake-weather-model completed\n"
        "  tool get_weather failed\n"
        "  llm chat fake-weather-model completed\n"
        "  tool get_weather completed\n"
        "  llm chat fake-weather-model completed"
    )
    assert (run.status, run.error, run.step_count) == ("completed", None, 5)
    assert run.output_preview == "answer: sunny in Paris"
    retried, succeeded = (s for s in root.children if s.row.kind == "tool")
    # The retry is an exception with an empty status message; its text is the tool's result.
    assert retried.row.error_type == "pydantic_ai.exceptions.ToolRetryError"
    assert retried.row.error_message == "weather service busy, try again"
    assert retried.row.output_preview == "weather service busy, try again"
    assert orjson.loads(succeeded.row.input_preview) == {"city": "Paris"}
    assert succeeded.row.output_preview == "sunny in Paris"


def test_pydantic_ai_tool_error_fails_the_run(grpc_traced: Traced, db: Client) -> None:
    def get_weather(city: str) -> str:
        raise ValueError(f"weather service crashed for {city}")

    model = calls_tool("get_weather", {"city": "Paris"}, "fake-weather-model")
    agent = pydantic_agent(model, "weather_agent", grpc_traced, [get_weather])
    with pytest.raises(ValueError, match="weather service crashed"):
        agent.run_sync("Weather in Paris?")

    run, root = read_back(grpc_traced, db)
    assert shape(root) == (
        "agent weather_agent failed\n"
        "  llm chat fake-weather-model completed\n"
        "  tool get_weather failed"
    )
    assert (run.status, run.step_count, run.model) == ("failed", 2, "fake-weather-model")
    assert run.error is not None
    assert (run.error.type, run.error.message) == (
        "ValueError",
        "ValueError: weather service crashed for Paris",
    )
    tool_step = named(root, "get_weather")
    assert tool_step.row.error_type == "ValueError"
    assert tool_step.row.error_message == "weather service crashed for Paris"
    assert orjson.loads(tool_step.row.input_preview) == {"city": "Paris"}
    # A failed tool's result is its error.
    assert tool_step.row.output_preview == "weather service crashed for Paris"


def test_pydantic_ai_sub_agent_is_a_sub_run_under_its_tool(grpc_traced: Traced, db: Client) -> None:
    def search_web(query: str) -> str:
        return f"{query}: 330 m tall"

    research_model = calls_tool("search_web", {"query": "Eiffel tower"}, "fake-research-model")
    research = pydantic_agent(research_model, "research_agent", grpc_traced, [search_web])

    async def delegate_research(topic: str) -> str:
        return (await research.run(f"Research {topic}")).output

    orchestrator_model = calls_tool(
        "delegate_research", {"topic": "Eiffel tower"}, "fake-orchestrator-model"
    )
    orchestrator = pydantic_agent(
        orchestrator_model, "orchestrator_agent", grpc_traced, [delegate_research]
    )
    result = orchestrator.run_sync("How tall is the Eiffel tower?")
    assert result.output == "answer: answer: Eiffel tower: 330 m tall"

    run, root = read_back(grpc_traced, db)
    assert shape(root) == (
        "agent orchestrator_agent completed\n"
        "  llm chat fake-orchestrator-model completed\n"
        "  tool delegate_research completed\n"
        "    agent research_agent completed (sub-run)\n"
        "      llm chat fake-research-model completed\n"
        "      tool search_web completed\n"
        "      llm chat fake-research-model completed\n"
        "  llm chat fake-orchestrator-model completed"
    )
    assert (run.name, run.status, run.step_count) == ("orchestrator_agent", "completed", 7)
    assert run.model == "fake-orchestrator-model"
    assert run.tokens == llm_tokens(root)
    sub_step, sub = research_sub_run(root, run)
    assert sub.run_id == sub_step.step_id != run.run_id
    assert sub.step_count == 3
    assert sub.model == "fake-research-model"
    assert sub.tokens == llm_tokens(sub_step)
    assert sub.tokens.total > 0
    assert run.tokens.total > sub.tokens.total
    assert "Research Eiffel tower" in sub.input_preview
    assert sub.output_preview == "answer: Eiffel tower: 330 m tall"


def test_pydantic_ai_model_error_fails_the_run(grpc_traced: Traced, db: Client) -> None:
    def broken(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise RuntimeError("model backend unavailable")

    model = FunctionModel(broken, model_name="fake-broken-model")
    agent = pydantic_agent(model, "failing_agent", grpc_traced, [])
    with pytest.raises(RuntimeError, match="model backend unavailable"):
        agent.run_sync("Hello?")

    run, root = read_back(grpc_traced, db)
    assert shape(root) == "agent failing_agent failed\n  llm chat fake-broken-model failed"
    assert (run.name, run.status, run.step_count) == ("failing_agent", "failed", 1)
    assert run.error is not None
    assert (run.error.type, run.error.message) == (
        "RuntimeError",
        "RuntimeError: model backend unavailable",
    )
    assert run.tokens == Tokens()


# LangGraph, through OpenInference


class FakeToolChatModel(GenericFakeChatModel):
    """The fake chat model, accepting tools: the scripted messages carry the calls."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        return self


def scripted(*messages: AIMessage) -> FakeToolChatModel:
    return FakeToolChatModel(messages=iter(messages))


def call(name: str, args: dict[str, Any], tokens: int) -> AIMessage:
    usage = {"input_tokens": tokens, "output_tokens": 5, "total_tokens": tokens + 5}
    tool_call = {"name": name, "args": args, "id": f"call_{name}", "type": "tool_call"}
    return AIMessage(content="", tool_calls=[tool_call], usage_metadata=usage)


def answer(text: str, tokens: int) -> AIMessage:
    usage = {"input_tokens": tokens, "output_tokens": 7, "total_tokens": tokens + 7}
    return AIMessage(content=text, usage_metadata=usage)


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@tool
def get_weather_broken(city: str) -> str:
    """The weather in a city, from a service that is down."""
    raise ValueError(f"weather service crashed for {city}")


@tool
def search_web(query: str) -> str:
    """Search the web."""
    return f"{query}: 330 m tall"


@REACT_AGENT_MOVED
def test_langgraph_react_agent_is_one_run_with_graph_nodes(
    langchain_traced: Traced, db: Client
) -> None:
    model = scripted(call("get_weather", {"city": "Paris"}, 10), answer("Sunny in Paris.", 20))
    agent = create_react_agent(model, [get_weather], name="weather_agent")
    state = agent.invoke({"messages": [("user", "Weather in Paris?")]})
    assert state["messages"][-1].content == "Sunny in Paris."

    run, root = read_back(langchain_traced, db)
    assert shape(root) == (
        "agent weather_agent completed\n"
        "  node agent completed\n"
        "    llm FakeToolChatModel completed\n"
        "  node tools completed\n"
        "    tool get_weather completed\n"
        "  node agent completed\n"
        "    llm FakeToolChatModel completed"
    )
    assert (run.name, run.kind, run.status, run.error) == (
        "weather_agent",
        "agent",
        "completed",
        None,
    )
    # 14 spans below the root: LangChain's chains count, they are steps too.
    assert run.step_count == 14
    nodes = [s for s in root.children if s.row.name == "agent"]
    assert [(s.row.kind, s.run) for s in nodes] == [("node", None), ("node", None)]
    assert run.tokens == llm_tokens(root) == Tokens(30, 12, 42)
    assert "Weather in Paris?" in run.input_preview
    # The output is the graph's final state: its last message is the answer.
    assert stored_output(db, run)["messages"][-1]["data"]["content"] == "Sunny in Paris."
    tool_step = named(root, "get_weather")
    assert tool_step.row.input_preview == "Paris"
    assert orjson.loads(tool_step.row.output_preview)["data"]["content"] == "sunny in Paris"


@REACT_AGENT_MOVED
def test_langgraph_tool_error_fails_the_run(langchain_traced: Traced, db: Client) -> None:
    model = scripted(call("get_weather_broken", {"city": "Paris"}, 10))
    agent = create_react_agent(model, [get_weather_broken], name="weather_agent")
    with pytest.raises(ValueError, match="weather service crashed"):
        agent.invoke({"messages": [("user", "Weather in Paris?")]})

    run, root = read_back(langchain_traced, db)
    assert shape(root) == (
        "agent weather_agent failed\n"
        "  node agent completed\n"
        "    llm FakeToolChatModel completed\n"
        "  node tools failed\n"
        "    tool get_weather_broken failed"
    )
    assert (run.status, run.step_count) == ("failed", 8)
    assert run.error is not None
    assert (run.error.type, run.error.message) == (
        "ValueError",
        "weather service crashed for Paris",
    )
    tool_step = named(root, "get_weather_broken")
    # LangChain's status message is repr(exc) and the traceback: the exception event is read.
    assert (tool_step.row.error_type, tool_step.row.error_message) == (
        "ValueError",
        "weather service crashed for Paris",
    )
    assert tool_step.row.input_preview == "Paris"
    assert tool_step.row.output_preview == "weather service crashed for Paris"


@REACT_AGENT_MOVED
def test_langgraph_agent_called_from_a_tool_is_a_sub_run(
    langchain_traced: Traced, db: Client
) -> None:
    research_model = scripted(
        call("search_web", {"query": "Eiffel tower"}, 30), answer("330 m.", 40)
    )
    research = create_react_agent(research_model, [search_web], name="research_agent")

    @tool
    def delegate_research(topic: str) -> str:
        """Ask the research agent."""
        state = research.invoke({"messages": [("user", f"Research {topic}")]})
        return str(state["messages"][-1].content)

    model = scripted(call("delegate_research", {"topic": "Eiffel tower"}, 10), answer("330 m!", 20))
    orchestrator = create_react_agent(model, [delegate_research], name="orchestrator_agent")
    state = orchestrator.invoke({"messages": [("user", "How tall is the Eiffel tower?")]})
    assert state["messages"][-1].content == "330 m!"

    run, root = read_back(langchain_traced, db)
    assert shape(root) == (
        "agent orchestrator_agent completed\n"
        "  node agent completed\n"
        "    llm FakeToolChatModel completed\n"
        "  node tools completed\n"
        "    tool delegate_research completed\n"
        "      agent research_agent completed (sub-run)\n"
        "        node agent completed\n"
        "          llm FakeToolChatModel completed\n"
        "        node tools completed\n"
        "          tool search_web completed\n"
        "        node agent completed\n"
        "          llm FakeToolChatModel completed\n"
        "  node agent completed\n"
        "    llm FakeToolChatModel completed"
    )
    assert (run.name, run.status, run.step_count) == ("orchestrator_agent", "completed", 29)
    assert run.tokens == Tokens(100, 24, 124)
    sub_step, sub = research_sub_run(root, run)
    assert sub.step_count == 14
    assert sub.tokens == llm_tokens(sub_step) == Tokens(70, 12, 82)
    assert "Research Eiffel tower" in sub.input_preview
    assert stored_output(db, sub)["messages"][-1]["data"]["content"] == "330 m."

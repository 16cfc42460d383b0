"""A seeded load of agent traffic, as encoded OTLP trace export requests.

Each run is one trace shaped like what GenAI instrumentations send: a root
`invoke_agent` span, then rounds of an LLM call (`chat <model>`, with
gen_ai request/response models, token usage and the input and output
messages as OTel GenAI JSON) followed by tool calls (`execute_tool <tool>`,
with JSON arguments and result); now and then a tool delegates to a
sub-agent with steps of its own. A run has 20 to 200 steps; spans average
about 1.5 KB encoded. A few tools fail (and the run goes on), a few runs
fail. Spans are listed in end order, children before their parent, as an
SDK's batch processor queues them; whole runs are packed into exports of
at most 512 spans (the SDK's max_export_batch_size).

The same seed gives the same bytes: every random choice comes from one
`random.Random(seed)`, and time starts at a fixed instant.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_service
from opentelemetry.proto.common.v1 import common_pb2 as otlp_common
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

BASE_NS = 1_795_000_000 * 10**9  # 2026-11-18 09:46 UTC, fixed so a seed gives the same bytes
MAX_BATCH = 512
MIN_STEPS, MAX_STEPS = 20, 200
MS = 1_000_000

_VOCABULARY = (
    "the a of to and in for on with as by at from that this it be is are was were will can "
    "agent model tool call result query search file data report user customer order invoice "
    "payment refund account weather city forecast temperature rain wind price stock market "
    "revenue quarter growth table column row index schema error retry timeout request answer "
    "summary draft email ticket issue status pending resolved escalate priority meeting note "
    "plan step next first then finally because however therefore check verify compare update "
    "create delete list fetch parse compute total average percent date time week month year "
    "Paris London Tokyo Berlin product shipping delivery warehouse region team owner review"
)
WORDS = _VOCABULARY.split()

# (agent, model, provider, tools) of the agents whose runs the load is made of.
AGENTS = (
    ("support_bot", "gpt-4o", "openai", ("search_kb", "get_order", "create_ticket", "refund")),
    ("research_agent", "claude-sonnet-4-5", "anthropic", ("search_web", "fetch_page", "notes")),
    ("sql_analyst", "gpt-4.1-mini", "openai", ("list_tables", "describe_table", "run_sql")),
    ("planner", "gemini-2.5-pro", "gcp.gemini", ("calendar", "get_weather", "send_email")),
    ("coder", "claude-opus-4-1", "anthropic", ("read_file", "write_file", "run_tests", "grep")),
)
SERVICES = ("support-svc", "research-svc", "analytics-svc", "assistant-svc", "dev-agent-svc")


@dataclass(frozen=True, slots=True)
class Run:
    trace_id: str  # hex
    spans: int


@dataclass(frozen=True, slots=True)
class Export:
    """One encoded ExportTraceServiceRequest and the whole runs it carries."""

    body: bytes
    spans: int
    runs: tuple[Run, ...]


def generate(seed: int, spans: int, start_ns: int = BASE_NS) -> list[Export]:
    """Exports holding at least `spans` spans of whole runs, the same for the same seed.

    `start_ns`: when the first run starts (the same bytes need the same start).
    """
    rng = random.Random(seed)
    exports, batch, batch_spans, total = [], [], 0, 0
    for index in _count():
        if total >= spans:
            break
        resource_spans, run = _RunBuilder(rng, index, start_ns).build()
        if batch_spans + run.spans > MAX_BATCH:
            exports.append(_encode(batch))
            batch, batch_spans = [], 0
        batch.append((resource_spans, run))
        batch_spans += run.spans
        total += run.spans
    if batch:
        exports.append(_encode(batch))
    return exports


def _count() -> Iterator[int]:
    index = 0
    while True:
        yield index
        index += 1


def _encode(batch: list[tuple[otlp.ResourceSpans, Run]]) -> Export:
    request = otlp_service.ExportTraceServiceRequest()
    request.resource_spans.extend(resource_spans for resource_spans, _ in batch)
    runs = tuple(run for _, run in batch)
    return Export(request.SerializeToString(), sum(run.spans for run in runs), runs)


def _value(value: str | int | float | list[str]) -> otlp_common.AnyValue:
    if isinstance(value, str):
        return otlp_common.AnyValue(string_value=value)
    if isinstance(value, bool | int):
        return otlp_common.AnyValue(int_value=int(value))
    if isinstance(value, float):
        return otlp_common.AnyValue(double_value=value)
    strings = [otlp_common.AnyValue(string_value=item) for item in value]
    return otlp_common.AnyValue(array_value=otlp_common.ArrayValue(values=strings))


def _attributes(pairs: dict[str, str | int | float | list[str]]) -> list[otlp_common.KeyValue]:
    return [otlp_common.KeyValue(key=key, value=_value(value)) for key, value in pairs.items()]


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class _RunBuilder:
    """One run: a root agent and its steps, built depth first, kept in end order."""

    def __init__(self, rng: random.Random, index: int, start_ns: int) -> None:
        self.rng = rng
        self.trace_id = rng.randbytes(16)
        self.agent, self.model, self.provider, self.tools = rng.choice(AGENTS)
        self.conversation = rng.randbytes(8).hex()
        self.clock = start_ns + index * 1_700 * MS + rng.randrange(1_000 * MS)
        self.spans: list[otlp.Span] = []
        self.failing = rng.random() < 0.04
        self.root_id = b""
        self.system = f"You are {self.agent}. Use the tools {', '.join(self.tools)}. " + " ".join(
            rng.choices(WORDS, k=30)
        )

    def build(self) -> tuple[otlp.ResourceSpans, Run]:
        steps = self.rng.randint(MIN_STEPS, MAX_STEPS)
        self._agent(self.agent, b"", steps, root=True)
        service = SERVICES[AGENTS.index((self.agent, self.model, self.provider, self.tools))]
        resource = _attributes({
            "service.name": service,
            "service.version": f"1.{self.rng.randrange(8)}.0",
            "service.instance.id": self.rng.randbytes(16).hex(),
            "deployment.environment.name": "prod",
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": "1.38.0",
        })  # fmt: skip
        scope = otlp.ScopeSpans(spans=self.spans)
        scope.scope.name, scope.scope.version = "opentelemetry.instrumentation.genai", "0.4b0"
        resource_spans = otlp.ResourceSpans(scope_spans=[scope])
        resource_spans.resource.attributes.extend(resource)
        return resource_spans, Run(self.trace_id.hex(), len(self.spans))

    def _words(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=self.rng.randint(low, high)))

    def _span(self, name: str, parent: bytes, kind: int) -> otlp.Span:
        span = otlp.Span(
            trace_id=self.trace_id, span_id=self.rng.randbytes(8), parent_span_id=parent,
            name=name, kind=kind, start_time_unix_nano=self.clock, flags=256,
        )  # fmt: skip
        self.clock += self.rng.randrange(50_000, 2 * MS)  # instrumentation overhead
        return span

    def _end(self, span: otlp.Span, attributes: dict[str, str | int | float | list[str]]) -> None:
        self.clock += self.rng.randrange(20_000, 500_000)
        span.end_time_unix_nano = self.clock
        span.attributes.extend(_attributes(attributes))
        self.spans.append(span)

    def _fail(self, span: otlp.Span, error_type: str, message: str) -> None:
        span.status.code, span.status.message = otlp.Status.STATUS_CODE_ERROR, message
        event = span.events.add(name="exception", time_unix_nano=self.clock)
        event.attributes.extend(_attributes({
            "exception.type": error_type,
            "exception.message": message,
            "exception.stacktrace": f"Traceback (most recent call last):\n  {self._words(20, 40)}",
        }))  # fmt: skip

    def _agent(self, name: str, parent: bytes, steps: int, *, root: bool = False) -> int:
        """An invoke_agent span with `steps` spans below it; returns its output tokens."""
        span = self._span(f"invoke_agent {name}", parent, otlp.Span.SPAN_KIND_INTERNAL)
        if root:
            self.root_id = span.span_id
        prompt = self._words(15, 60)
        history: list[dict[str, object]] = [_text("user", prompt)]
        usage = [0, 0]
        left = steps
        while left > 0:
            last = self._chat(span.span_id, name, history, usage, final=left == 1)
            left -= 1
            for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
                if left <= 0:
                    break
                left -= self._tool(span.span_id, name, history, left, root=root)
        if root and self.failing:
            self._fail(span, "openai.RateLimitError", "RateLimitError: rate limit exceeded")
        self._end(span, {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": name,
            "gen_ai.agent.id": f"{name}-{self.conversation[:6]}",
            "gen_ai.conversation.id": self.conversation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "gen_ai.input.messages": _compact([_text("user", prompt)]),
            "gen_ai.output.messages": _compact([last]),
            "gen_ai.usage.input_tokens": usage[0],
            "gen_ai.usage.output_tokens": usage[1],
        })  # fmt: skip
        return usage[1]

    def _chat(
        self, parent: bytes, agent: str, history: list[dict[str, object]], usage: list[int],
        *, final: bool,
    ) -> dict[str, object]:  # fmt: skip
        span = self._span(f"chat {self.model}", parent, otlp.Span.SPAN_KIND_CLIENT)
        self.clock += self.rng.randrange(300, 4_000) * MS
        if final:
            answer = _text("assistant", self._words(40, 140))
        else:
            tool = self.rng.choice(self.tools)
            arguments = {"query": self._words(3, 12), "limit": self.rng.randint(1, 50)}
            call_id = f"call_{self.rng.randbytes(6).hex()}"
            call = {"type": "tool_call", "name": tool, "id": call_id, "arguments": arguments}
            answer = {"role": "assistant", "parts": [call]}
        tokens_in, tokens_out = self.rng.randint(400, 12_000), self.rng.randint(10, 800)
        usage[0], usage[1] = usage[0] + tokens_in, usage[1] + tokens_out
        if final and self.failing and parent == self.root_id:
            self._fail(span, "openai.RateLimitError", "rate limit exceeded for model")
        self._end(span, {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.provider,
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": self.conversation,
            "gen_ai.request.model": self.model,
            "gen_ai.request.temperature": 0.2,
            "gen_ai.request.max_tokens": 4096,
            "gen_ai.response.model": f"{self.model}-2025-08-06",
            "gen_ai.response.id": f"resp_{self.rng.randbytes(12).hex()}",
            "gen_ai.response.finish_reasons": ["stop" if final else "tool_calls"],
            "gen_ai.usage.input_tokens": tokens_in,
            "gen_ai.usage.output_tokens": tokens_out,
            "server.address": f"api.{self.provider}.example",
            "gen_ai.system_instructions": _compact([{"type": "text", "content": self.system}]),
            # Instrumentations send the recent conversation, not all of it, by default.
            "gen_ai.input.messages": _compact(history[-3:]),
            "gen_ai.output.messages": _compact([answer]),
        })  # fmt: skip
        history.append(answer)
        return answer

    def _tool(
        self, parent: bytes, agent: str, history: list[dict[str, object]], left: int,
        *, root: bool,
    ) -> int:  # fmt: skip
        """A tool call (sometimes delegating to a sub-agent); returns the spans it used."""
        last = history[-1]["parts"]
        call = last[0] if isinstance(last, list) and last[0].get("type") == "tool_call" else {}
        tool = str(call.get("name") or self.rng.choice(self.tools))
        call_id = str(call.get("id") or f"call_{self.rng.randbytes(6).hex()}")
        span = self._span(f"execute_tool {tool}", parent, otlp.Span.SPAN_KIND_INTERNAL)
        used = 1
        if root and left >= 8 and self.rng.random() < 0.06:
            sub_steps = self.rng.randint(3, min(30, left - 2))
            self._agent(f"{tool}_helper", span.span_id, sub_steps)
            used += 1 + sub_steps
        self.clock += self.rng.randrange(5, 800) * MS
        result = _compact({"items": [self._words(12, 50) for _ in range(self.rng.randint(1, 4))]})
        if self.rng.random() < 0.03:
            self._fail(span, "ToolError", f"{tool} failed: {self._words(4, 10)}")
        self._end(span, {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.type": "function",
            "gen_ai.tool.call.id": call_id,
            "gen_ai.agent.name": agent,
            "gen_ai.tool.call.arguments": _compact(call.get("arguments") or {}),
            "gen_ai.tool.call.result": result,
        })  # fmt: skip
        history.append({"role": "tool", "parts": [
            {"type": "tool_call_response", "id": call_id, "response": result}]})  # fmt: skip
        return used


def _text(role: str, content: str) -> dict[str, object]:
    return {"role": role, "parts": [{"type": "text", "content": content}]}

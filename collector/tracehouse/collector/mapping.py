"""Spans → steps: the semantic-convention mapping of DESIGN.md §3.

Pure and table-driven: `map_span` is a function of one span's facts (and a
price lookup), with no I/O. Every field is read through an ordered list of
conventions, first non-empty wins; a value we do not recognise falls through
to the next rule. What needs more than one span (a run's status, tokens,
sub-run nesting) is decided from these per-span facts when runs are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import orjson

from tracehouse.collector.mapping_content import (
    ARGS_READERS,
    INPUT_READERS,
    OUTPUT_READERS,
    RESULT_READERS,
    bounded,
    first,
    first_attribute,
)
from tracehouse.schema.rows import (
    PENDING_NO_PARENT,
    PENDING_PARENT_KEY,
    PENDING_SPAN_TYPE,
    PENDING_TYPE_KEY,
    RUN_KINDS,
    Status,
    StepKind,
)

Attributes = Mapping[str, str]
Events = Sequence[tuple[str, Attributes]]
Pricer = Callable[[str, str, int, int], float | None]


class SpanFacts(NamedTuple):
    """What the mapping reads of a span: values as stored (text; JSON for structures)."""

    name: str
    parent_span_id: str
    status_code: str  # "Unset" | "Ok" | "Error"
    status_message: str
    attributes: Attributes
    events: Events
    resource: Attributes


class Step(NamedTuple):
    """A span as a step; fields in `MAPPED_SPAN_COLUMNS` order."""

    kind: str
    name: str
    status: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None
    error_type: str
    error_message: str
    input: str
    output: str
    input_bytes: int
    output_bytes: int
    trigger: str
    version: str
    session_id: str
    pending: int  # 1: a pending span, standing for its real span until that arrives


K = StepKind

_HEX = frozenset("0123456789abcdef")


def pending_ids(attributes: Attributes, parent_span_id: str) -> tuple[str, str] | None:
    """For a pending span (Logfire's format), the ids of the span it announces.

    A pending span is a zero-length child of the real span, carrying the real
    span's parent in `logfire.pending_parent_id` (all zeros for a root). It
    is stored as the real span's step, started and not ended; None for any
    other span, and for a pending span too malformed to place, which is then
    kept as an ordinary span.
    """
    if attributes.get(PENDING_TYPE_KEY) != PENDING_SPAN_TYPE or not parent_span_id:
        return None  # (an all-zero parent id arrives here as none)
    parent = attributes.get(PENDING_PARENT_KEY, "").lower()
    if parent == PENDING_NO_PARENT:
        parent = ""
    if parent and (len(parent) != 16 or not _HEX.issuperset(parent)):
        return None
    return parent_span_id, parent


_LANGFUSE_TYPES = {
    "generation": K.LLM, "agent": K.AGENT, "tool": K.TOOL, "chain": K.CHAIN,
    "retriever": K.RETRIEVER, "embedding": K.EMBEDDING, "evaluator": K.EVALUATOR,
    "guardrail": K.GUARDRAIL, "span": K.SPAN, "event": K.SPAN,
}  # fmt: skip
_OPENINFERENCE_KINDS = {
    "LLM": K.LLM, "CHAIN": K.CHAIN, "TOOL": K.TOOL, "AGENT": K.AGENT, "RETRIEVER": K.RETRIEVER,
    "RERANKER": K.RETRIEVER, "EMBEDDING": K.EMBEDDING, "GUARDRAIL": K.GUARDRAIL,
    "EVALUATOR": K.EVALUATOR, "PROMPT": K.CHAIN,
}  # fmt: skip
_LANGSMITH_KINDS = {
    "llm": K.LLM, "chain": K.CHAIN, "tool": K.TOOL, "retriever": K.RETRIEVER,
    "embedding": K.EMBEDDING, "prompt": K.CHAIN, "parser": K.CHAIN,
}  # fmt: skip
_GENAI_OPERATIONS = {
    "invoke_agent": K.AGENT, "create_agent": K.AGENT, "invoke_workflow": K.WORKFLOW,
    "execute_tool": K.TOOL, "chat": K.LLM, "text_completion": K.LLM,
    "generate_content": K.LLM, "embeddings": K.EMBEDDING, "retrieval": K.RETRIEVER,
}  # fmt: skip
_TRACELOOP_KINDS = {"workflow": K.WORKFLOW, "agent": K.AGENT, "task": K.CHAIN, "tool": K.TOOL}
_AI_SDK_OPERATIONS = {
    "ai.generateText": K.AGENT, "ai.streamText": K.AGENT, "ai.generateObject": K.AGENT,
    "ai.streamObject": K.AGENT, "ai.generateText.doGenerate": K.LLM,
    "ai.streamText.doStream": K.LLM, "ai.generateObject.doGenerate": K.LLM,
    "ai.streamObject.doStream": K.LLM, "ai.toolCall": K.TOOL, "ai.embed": K.EMBEDDING,
    "ai.embedMany": K.EMBEDDING, "ai.embed.doEmbed": K.EMBEDDING,
    "ai.embedMany.doEmbed": K.EMBEDDING,
}  # fmt: skip
_TOOL_PREFIXES = ("gen_ai.tool.", "ai.toolCall.")
_MODEL_KEYS = (
    "gen_ai.response.model", "gen_ai.request.model", "llm.response.model_name",
    "llm.model_name", "ai.response.model", "ai.model.id",
)  # fmt: skip


def _table(key: str, table: Mapping[str, StepKind]) -> Callable[[SpanFacts], StepKind | None]:
    return lambda span: table.get(span.attributes.get(key, ""))


_KINDS = {kind.value: kind for kind in StepKind}


def _own_kind(span: SpanFacts) -> StepKind | None:
    return _KINDS.get(span.attributes.get("tracehouse.step.kind", ""))


def _openinference(span: SpanFacts) -> StepKind | None:
    kind = _OPENINFERENCE_KINDS.get(span.attributes.get("openinference.span.kind", ""))
    # A LangGraph node is marked AGENT or CHAIN; it is a step of its graph's
    # run (its metadata names it), not a run of its own.
    if kind in (K.AGENT, K.CHAIN) and _langgraph_node(span.attributes) == span.name:
        return K.NODE
    return kind


def _langgraph_node(attributes: Attributes) -> str:
    metadata = attributes.get("metadata", "")
    if "langgraph_node" not in metadata:
        return ""
    try:
        node = orjson.loads(metadata).get("langgraph_node", "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return node if isinstance(node, str) else ""


def _has_tool_attributes(span: SpanFacts) -> StepKind | None:
    return K.TOOL if any(k.startswith(_TOOL_PREFIXES) for k in span.attributes) else None


def _has_model(span: SpanFacts) -> StepKind | None:
    found = any(k in span.attributes for k in _MODEL_KEYS) or "llm.request.type" in span.attributes
    return K.LLM if found else None


KIND_RULES: tuple[Callable[[SpanFacts], StepKind | None], ...] = (
    _own_kind,
    _table("langfuse.observation.type", _LANGFUSE_TYPES),
    _openinference,
    _table("langsmith.span.kind", _LANGSMITH_KINDS),
    _table("gen_ai.operation.name", _GENAI_OPERATIONS),
    _table("traceloop.span.kind", _TRACELOOP_KINDS),
    _table("ai.operationId", _AI_SDK_OPERATIONS),
    _has_tool_attributes,
    _has_model,
)


def step_kind(span: SpanFacts) -> StepKind:
    for rule in KIND_RULES:
        if kind := rule(span):
            return kind
    return K.SPAN


_RUN_NAME_KEYS = (
    "tracehouse.run.name", "gen_ai.workflow.name", "gen_ai.agent.name", "agent.name",
    "traceloop.entity.name", "traceloop.workflow.name", "ai.telemetry.functionId",
)  # fmt: skip
_TOOL_NAME_KEYS = ("gen_ai.tool.name", "tool.name", "ai.toolCall.name", "traceloop.entity.name")
_RUN_PREFIX = re.compile(r"^(invoke_agent|invoke_workflow|create_agent) ")
_TOOL_PREFIX = re.compile(r"^execute_tool ")


def step_name(span: SpanFacts, kind: StepKind) -> str:
    if kind == K.TOOL:
        return first_attribute(span.attributes, _TOOL_NAME_KEYS) or _TOOL_PREFIX.sub("", span.name)
    if kind in RUN_KINDS or not span.parent_span_id:
        return first_attribute(span.attributes, _RUN_NAME_KEYS) or _RUN_PREFIX.sub("", span.name)
    return span.attributes.get("traceloop.entity.name") or span.name


def model(attributes: Attributes) -> str:
    for key in _MODEL_KEYS:
        value = attributes.get(key, "")
        if value and value != "unknown":
            return value
    return ""


_INPUT_TOKEN_KEYS = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
    "ai.usage.inputTokens", "ai.usage.promptTokens",
)  # fmt: skip
_OUTPUT_TOKEN_KEYS = (
    "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
    "llm.token_count.completion", "ai.usage.outputTokens", "ai.usage.completionTokens",
)  # fmt: skip
_TOTAL_TOKEN_KEYS = ("llm.token_count.total", "gen_ai.usage.total_tokens", "ai.usage.totalTokens")


# More tokens than any call has used: a larger count is taken as this, so a
# run's sum of its steps cannot overflow its UInt64 column.
MAX_TOKENS = 10**12


def _count(attributes: Attributes, keys: Sequence[str]) -> int | None:
    for key in keys:
        value = attributes.get(key)
        if value:
            try:
                return min(max(int(float(value)), 0), MAX_TOKENS)
            except (ValueError, OverflowError):
                continue
    return None


def tokens(attributes: Attributes) -> tuple[int, int, int]:
    """Input, output and total tokens a span reports (0 where it reports none)."""
    input_tokens = _count(attributes, _INPUT_TOKEN_KEYS) or 0
    output_tokens = _count(attributes, _OUTPUT_TOKEN_KEYS) or 0
    total = _count(attributes, _TOTAL_TOKEN_KEYS)
    return input_tokens, output_tokens, input_tokens + output_tokens if total is None else total


_PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system", "ai.model.provider", "llm.provider")

# Exception types that mean "stopped on purpose", matched on the last dotted part.
CANCELLATIONS = frozenset({"CancelledError", "AbortError", "KeyboardInterrupt", "GeneratorExit"})


def _exception(events: Events) -> Attributes:
    """The attributes of the last `exception` event, or none."""
    for name, attributes in reversed(events):
        if name == "exception":
            return attributes
    return {}


def outcome(span: SpanFacts) -> tuple[Status, str, str]:
    """The step's status, and its error type and message when it did not complete."""
    exception = _exception(span.events)
    error_type = span.attributes.get("error.type") or exception.get("exception.type", "")
    cancelled = span.attributes.get("tracehouse.run.status") == "cancelled" or (
        span.status_code != "Ok" and error_type.rpartition(".")[2] in CANCELLATIONS
    )
    if cancelled:
        status = Status.CANCELLED
    elif span.status_code == "Error":
        status = Status.FAILED
    else:
        return Status.COMPLETED, "", ""
    message = span.status_message
    if _TRACEBACK in message:  # LangChain puts repr(exc) and the whole traceback here
        message = exception.get("exception.message") or message.partition(_TRACEBACK)[0]
    return status, error_type, message or exception.get("exception.message", "")


_TRACEBACK = "Traceback (most recent call last)"


def map_span(
    span: SpanFacts, price: Pricer, max_value_bytes: int, *, pending: bool = False
) -> Step:
    """The step a span is; `pending` for a pending span (facts name the real span's parent)."""
    kind = step_kind(span)
    attributes = span.attributes
    status, error_type, error_message = (Status.RUNNING, "", "") if pending else outcome(span)
    is_tool = kind == K.TOOL
    raw_input = first(ARGS_READERS if is_tool else INPUT_READERS, attributes, span.events)
    raw_output = first(RESULT_READERS if is_tool else OUTPUT_READERS, attributes, span.events)
    if is_tool and not raw_output and status is not Status.COMPLETED:
        raw_output = error_message or error_type  # a failed tool's result is its error
    input_text, input_bytes = bounded(raw_input, max_value_bytes)
    output_text, output_bytes = bounded(raw_output, max_value_bytes)
    step_model = model(attributes)
    input_tokens, output_tokens, total_tokens = tokens(attributes)
    cost = None
    if step_model and (input_tokens or output_tokens) and kind in (K.LLM, K.EMBEDDING):
        provider = first_attribute(attributes, _PROVIDER_KEYS)
        cost = price(step_model, provider, input_tokens, output_tokens)
    return Step(
        kind=kind,
        name=step_name(span, kind),
        status=status,
        model=step_model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cost_usd=cost,
        error_type=error_type,
        error_message=error_message,
        input=input_text,
        output=output_text,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        trigger=first_attribute(attributes, ("tracehouse.run.trigger", "faas.trigger")),
        version=first_attribute(attributes, _VERSION_KEYS)
        or span.resource.get("service.version", ""),
        session_id=first_attribute(attributes, _SESSION_KEYS),
        pending=int(pending),
    )


_VERSION_KEYS = (
    "tracehouse.run.version", "gen_ai.agent.version", "traceloop.entity.version",
    "langfuse.version",
)  # fmt: skip
_SESSION_KEYS = (
    "gen_ai.conversation.id", "session.id", "langfuse.session.id",
    "traceloop.association.properties.session_id", "ai.telemetry.metadata.sessionId",
)  # fmt: skip

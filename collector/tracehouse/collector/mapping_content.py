"""Where a span keeps its input and output, in every convention we read.

Part of the mapping, and as pure: functions of a span's attributes and
events. Each convention is one small reader; the tables at the bottom list
them in the order DESIGN.md §3 gives, first non-empty wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

Attributes = Mapping[str, str]
Events = Sequence[tuple[str, Attributes]]
Reader = Callable[[Attributes, Events], str]

TRUNCATION_MARKER = "…[truncated by tracehouse: {size} bytes in all]"


def bounded(text: str, limit: int) -> tuple[str, int]:
    """The text cut to `limit` UTF-8 bytes with an explicit marker, and its size as sent."""
    if text.isascii():  # the common case: one byte a character, no copy to measure
        if len(text) <= limit:
            return text, len(text)
    elif len(text) * 4 <= limit:  # cannot be over: UTF-8 takes at most 4 bytes a character
        return text, len(text.encode())
    encoded = text.encode()
    size = len(encoded)
    if size <= limit:
        return text, size
    marker = TRUNCATION_MARKER.format(size=size)
    kept = encoded[: max(limit - len(marker.encode()), 0)].decode(errors="ignore")
    return kept + marker, size


def first_attribute(attributes: Attributes, keys: Sequence[str]) -> str:
    """The first non-empty value among `keys`, or ""."""
    for key in keys:
        if value := attributes.get(key):
            return value
    return ""


def _attribute(*keys: str) -> Reader:
    return lambda attributes, events: first_attribute(attributes, keys)


# orjson writes JSON nested at most this deep (it reads deeper): a value
# that could be deeper is kept as the text it came as.
_MAX_DEPTH = 250
# No convention flattens a message deeper than a few levels.
_MAX_KEY_PARTS = 32


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # a structure too deep to write, from nowhere we know
        return ""


def _loads(text: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if text.count("[") + text.count("{") >= _MAX_DEPTH:  # cheap: it cannot be too deep
        try:
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            return text
    return value


def _genai_input(attributes: Attributes, events: Events) -> str:
    """`gen_ai.input.messages`, with `gen_ai.system_instructions` as a leading system message."""
    messages = attributes.get("gen_ai.input.messages")
    if not messages:
        return ""
    instructions = attributes.get("gen_ai.system_instructions")
    if not instructions:
        return messages
    system = {"role": "system", "parts": _loads(instructions)}
    listed = messages.strip()
    if listed[:1] == "[" and listed[-1:] == "]":
        # Spliced in as text: a conversation costs more to parse and write
        # again than all the rest of its span, and its messages stay as sent.
        head, rest = _json(system), listed[1:-1].strip()
        return (f"[{head},{rest}]" if rest else f"[{head}]") if head else ""
    return _json([system, _loads(messages)])


def unflatten(attributes: Attributes, prefix: str) -> Any:
    """`prefix.0.message.role = user` style keys as nested lists and dicts; None if absent."""
    tree: dict[str, Any] = {}
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        node = tree
        *path, leaf = key[len(prefix) :].split(".", _MAX_KEY_PARTS)
        if len(path) >= _MAX_KEY_PARTS:
            continue  # hostile, not a convention: left in the attributes as sent
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a key both leaf and branch: keep the leaf
                break
            node = child
        else:
            node[leaf] = _loads(value) if value[:1] in "[{" else value
    return _as_lists(tree) if tree else None


def _as_lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _as_lists(value) for key, value in node.items()}
    if converted and all(key.isascii() and key.isdecimal() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _flattened(prefix: str) -> Reader:
    def read(attributes: Attributes, events: Events) -> str:
        value = unflatten(attributes, prefix)
        return "" if value is None else _json(value)

    return read


# Semantic-convention events before GenAI moved content into attributes.
_MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_messages(attributes: Attributes, events: Events) -> str:
    messages = [
        {"role": _MESSAGE_EVENTS[name]} | {k: _loads(v) for k, v in attrs.items()}
        for name, attrs in events
        if name in _MESSAGE_EVENTS
    ]
    if messages:
        return _json(messages)
    return _details_event(events, "gen_ai.input.messages")


def _event_choices(attributes: Attributes, events: Events) -> str:
    choices = [
        {k: _loads(v) for k, v in attrs.items()}
        for name, attrs in events
        if name == "gen_ai.choice"
    ]
    if choices:
        return _json(choices)
    return _details_event(events, "gen_ai.output.messages")


def _details_event(events: Events, key: str) -> str:
    """The newer GenAI form: one `gen_ai.client.inference.operation.details` event."""
    for name, attrs in events:
        if name == "gen_ai.client.inference.operation.details" and attrs.get(key):
            return attrs[key]
    return ""


INPUT_READERS: tuple[Reader, ...] = (
    _attribute("langfuse.observation.input", "langfuse.trace.input"),
    _attribute("input.value"),
    _attribute("traceloop.entity.input"),
    _genai_input,
    _attribute("pydantic_ai.all_messages"),
    _attribute("ai.prompt.messages", "ai.prompt"),
    _flattened("llm.input_messages."),
    _flattened("gen_ai.prompt."),
    _event_messages,
)

OUTPUT_READERS: tuple[Reader, ...] = (
    _attribute("langfuse.observation.output", "langfuse.trace.output"),
    _attribute("output.value"),
    _attribute("traceloop.entity.output"),
    _attribute("gen_ai.output.messages"),
    _attribute("final_result"),
    _attribute("ai.response.text", "ai.response.object", "ai.response.toolCalls"),
    _flattened("llm.output_messages."),
    _flattened("gen_ai.completion."),
    _event_choices,
)

ARGS_READERS: tuple[Reader, ...] = (
    _attribute("gen_ai.tool.call.arguments"),
    _attribute("input.value"),
    _attribute("ai.toolCall.args"),
    _attribute("traceloop.entity.input"),
)

RESULT_READERS: tuple[Reader, ...] = (
    _attribute("gen_ai.tool.call.result"),
    _attribute("output.value"),
    _attribute("ai.toolCall.result"),
    _attribute("traceloop.entity.output"),
)


def first(readers: Sequence[Reader], attributes: Attributes, events: Events) -> str:
    for read in readers:
        if value := read(attributes, events):
            return value
    return ""

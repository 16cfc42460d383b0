"""The API's JSON shapes as pydantic models: for OpenAPI, and for tests to hold answers to.

Routes build plain dicts (`views.py`) for speed; these models say what
those dicts are. Times are RFC 3339 in UTC with microseconds; durations are
milliseconds; ids lowercase hex.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["running", "completed", "failed", "cancelled"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tokens(Model):
    input: int
    output: int
    total: int


class Error(Model):
    type: str
    message: str


class RunHeader(Model):
    run_id: str
    trace_id: str
    parent_run_id: str | None
    name: str
    kind: str
    status: Status
    trigger: str
    version: str
    service: str
    session_id: str
    started_at: str
    ended_at: str | None
    duration_ms: float | None
    step_count: int
    tokens: Tokens
    cost_usd: float | None
    model: str
    error: Error | None
    input_preview: str
    output_preview: str
    stale: bool = Field(
        description="Running, but nothing has arrived for `stale_after_s` (default 30 min): "
        "its process may be gone. Its status stays `running`."
    )


class Step(Model):
    """A node of a run's tree. For a sub-run, the run fields are set and its header's
    kind, tokens, cost, model and error speak for the whole sub-run."""

    step_id: str
    parent_step_id: str | None
    kind: str
    name: str
    status: Status
    started_at: str
    ended_at: str | None
    duration_ms: float | None
    model: str
    tokens: Tokens
    cost_usd: float | None
    error: Error | None
    orphan: bool
    warnings: list[str] = Field(
        description="What the collector changed of the span as sent, or doubts about it: "
        "attributes_dropped, attribute_cut, events_dropped, links_dropped (over the limits), "
        "end_before_start, no_start_time, clock_ahead (its clock)."
    )
    child_count: int
    children: list[Step] | None
    run_id: str | None
    trace_id: str | None
    parent_run_id: str | None
    trigger: str | None
    version: str | None
    service: str | None
    session_id: str | None
    step_count: int | None
    input_preview: str | None
    output_preview: str | None


class Counts(Model):
    all: int
    running: int
    completed: int
    failed: int
    cancelled: int


class RunList(Model):
    runs: list[RunHeader]
    counts: Counts
    next_cursor: str | None


class RunTree(Model):
    run: RunHeader
    root: Step


class Resource(Model):
    service: str
    attributes: dict[str, Any]
    schema_url: str


class Scope(Model):
    name: str
    version: str
    attributes: dict[str, Any]


class Event(Model):
    """A span event, or a log record linked to the step (those have a `body`)."""

    name: str
    time: str | None
    attributes: dict[str, Any]
    body: Any = Field(None, description="A log record's body; absent for span events.")
    severity: str | None = Field(None, description="A log record's severity text.")


class Link(Model):
    trace_id: str
    span_id: str
    trace_state: str
    attributes: dict[str, Any]


class StepDetail(Step):
    """One step in full. A tool has `args` and `result`; every other step `input` and
    `output` (JSON where the stored value is a JSON document, text otherwise)."""

    model_config = ConfigDict(extra="allow")
    span_name: str
    span_kind: str
    status_code: str
    status_message: str
    attributes: dict[str, Any]
    resource: Resource
    scope: Scope
    events: list[Event]
    links: list[Link]
    streams: dict[str, str] = Field(
        description="Text the step streamed, by channel (`output`, `reasoning`): what a live "
        "client saw arrive as output_delta messages."
    )


class Quantiles(Model):
    p50: float | None
    p95: float | None
    p99: float | None


class RunsByStatus(Model):
    total: int
    by_status: dict[Status, int]
    error_rate: float | None


class Bucket(Model):
    bucket_start: str | None
    by_status: dict[Status, int]
    error_rate: float | None
    duration_ms: Quantiles


class ModelUsage(Model):
    model: str
    calls: int
    tokens: Tokens
    cost_usd: float | None


class NameUsage(Model):
    name: str
    runs: int
    tokens: Tokens
    cost_usd: float | None
    error_rate: float | None


class Stats(Model):
    since: str | None
    until: str | None
    bucket_seconds: int
    runs: RunsByStatus
    duration_ms: Quantiles
    series: list[Bucket]
    by_model: list[ModelUsage]
    by_run_name: list[NameUsage]


class ErrorBody(Model):
    code: str
    message: str


class ErrorEnvelope(Model):
    error: ErrorBody

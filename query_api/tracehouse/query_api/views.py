"""Run headers, steps and step details as the JSON of the API contract (DESIGN.md §4).

Plain dicts, built directly: a tree may hold a hundred thousand steps, and
building a validated model per step would cost more than the query. The
pydantic models in `models.py` document the same shapes, and the tests
hold these dicts to them.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from tracehouse.query_api.assembly import Error, RunHeader, Step, Tokens, ended_ns
from tracehouse.schema.rows import StepKind, decode_attributes, decode_value

# JSON nests two levels per tree level; deeper trees are cut here and read
# on with `?from=<step_id>`.
MAX_TREE_DEPTH = 100


def rfc3339(ns: int | None) -> str | None:
    """UTC, microseconds, `Z`: 2026-11-25T21:23:36.123456Z."""
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _duration_ms(start: int, end: int | None) -> float | None:
    return None if end is None else (end - start) / 1e6


def _tokens(tokens: Tokens) -> dict[str, int]:
    return {"input": tokens.input, "output": tokens.output, "total": tokens.total}


def _error(error: Error | None) -> dict[str, str] | None:
    return None if error is None else {"type": error.type, "message": error.message}


def run_view(run: RunHeader) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "trace_id": run.trace_id,
        "parent_run_id": run.parent_run_id,
        "name": run.name,
        "kind": run.kind,
        "status": run.status,
        "trigger": run.trigger,
        "version": run.version,
        "service": run.service,
        "session_id": run.session_id,
        "started_at": rfc3339(run.started_ns),
        "ended_at": rfc3339(run.ended_ns),
        "duration_ms": _duration_ms(run.started_ns, run.ended_ns),
        "step_count": run.step_count,
        "tokens": _tokens(run.tokens),
        "cost_usd": usd(run.cost_usd),
        "model": run.model,
        "error": _error(run.error),
        "input_preview": run.input_preview,
        "output_preview": run.output_preview,
        "stale": run.stale,
    }


_RUN_ONLY = ("run_id", "trace_id", "parent_run_id", "trigger", "version", "service",
             "session_id", "step_count", "input_preview", "output_preview")  # fmt: skip


def usd(cost: float | None) -> float | None:
    """A cost to a billionth of a cent: the same costs summed in another order
    (ClickHouse's, numpy's in levels.py, the tree's) differ in their last bits."""
    return None if cost is None else round(cost, 11)


def step_view(step: Step, depth: int | None) -> dict[str, Any]:
    """A step and `depth` levels below it (None: as deep as MAX_TREE_DEPTH)."""
    levels = MAX_TREE_DEPTH if depth is None else min(depth, MAX_TREE_DEPTH)
    return _step(step, levels)


def _step(step: Step, levels: int) -> dict[str, Any]:
    row = step.row
    end = ended_ns(row)
    failed = row.error_type or row.error_message
    view: dict[str, Any] = {
        "step_id": row.span_id,
        "parent_step_id": step.parent_step_id,
        "kind": row.kind,
        "name": row.name,
        "status": row.status,
        "started_at": rfc3339(row.start_ns),
        "ended_at": rfc3339(end),
        "duration_ms": _duration_ms(row.start_ns, end),
        "model": row.model,
        "tokens": _tokens(row.tokens),
        "cost_usd": usd(row.cost_usd),
        "error": {"type": row.error_type, "message": row.error_message} if failed else None,
        "orphan": step.orphan,
        "warnings": list(row.warnings),
        "child_count": len(step.children) + step.unread,
        "children": None,
    } | dict.fromkeys(_RUN_ONLY)
    if step.run is not None:
        # A sub-run (or the tree's own run): its header fields, which speak
        # for everything below it (tokens, cost), override the span's own.
        header = run_view(step.run)
        view |= {key: header[key] for key in _RUN_ONLY}
        view |= {k: header[k] for k in ("kind", "tokens", "cost_usd", "model", "error")}
    if levels > 0:
        assert not step.unread, "a step whose children were not read is shown without them"
        view["children"] = [_step(child, levels - 1) for child in step.children]
    return view


def _value(text: str) -> Any:
    """Stored input/output: JSON documents as JSON, anything else as text."""
    if text[:1] in ("{", "["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _attributes(values: dict[str, str], types: dict[str, str], scope: str) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in decode_attributes(values, types, scope).items()}


def step_detail_view(step: Step, row: dict[str, Any], logs: list[dict[str, Any]]) -> dict[str, Any]:
    """One step in full: its Step fields, everything stored of the span, and its log records.

    Streamed chunks are joined into `streams`; other linked log records
    join the span's events, in time order.
    """
    types = row["AttributeTypes"]
    streams: dict[str, str] = {}
    log_events = []
    for record in logs:
        if record["Channel"]:
            streams[record["Channel"]] = streams.get(record["Channel"], "") + record["Body"]
        else:
            log_events.append((record["at"], _log_event(record)))
    is_tool = row["StepKind"] == StepKind.TOOL
    inputs = ("args", "result") if is_tool else ("input", "output")
    view = _step(step, 0)
    view |= {
        inputs[0]: _value(row["Input"]),
        inputs[1]: _value(row["Output"]),
        f"{inputs[0]}_bytes": row["InputBytes"],
        f"{inputs[1]}_bytes": row["OutputBytes"],
        "span_name": row["SpanName"],
        "span_kind": row["SpanKind"],
        "status_code": row["StatusCode"],
        "status_message": row["StatusMessage"],
        "attributes": _attributes(row["SpanAttributes"], types, "s"),
        "resource": {
            "service": row["ServiceName"],
            "attributes": _attributes(row["ResourceAttributes"], types, "r"),
            "schema_url": row["ResourceSchemaUrl"],
        },
        "scope": {
            "name": row["ScopeName"],
            "version": row["ScopeVersion"],
            "attributes": _attributes(row["ScopeAttributes"], types, "c"),
        },
        "events": [event for _, event in sorted(_span_events(row) + log_events, key=_first)],
        "links": [
            {
                "trace_id": trace,
                "span_id": span,
                "trace_state": state,
                "attributes": _attributes(attrs, types, f"l{i}"),
            }
            for i, (trace, span, state, attrs) in enumerate(
                zip(
                    row["Links.TraceId"],
                    row["Links.SpanId"],
                    row["Links.TraceState"],
                    row["Links.Attributes"],
                    strict=True,
                )
            )
        ],
        "streams": streams,
    }
    return view


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _span_events(row: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    types = row["AttributeTypes"]
    events = zip(row["Events.Name"], row["event_ns"], row["Events.Attributes"], strict=True)
    return [
        (ns, {"name": name, "time": rfc3339(ns), "attributes": _attributes(attrs, types, f"e{i}")})
        for i, (name, ns, attrs) in enumerate(events)
    ]


def _log_event(record: dict[str, Any]) -> dict[str, Any]:
    types = record["AttributeTypes"]
    body_type = types.get("b.body")
    body = decode_value(record["Body"], body_type) if body_type else _value(record["Body"])
    return {
        "name": record["EventName"] or "log",
        "time": rfc3339(record["at"]),
        "attributes": _attributes(record["LogAttributes"], types, "s"),
        "body": _jsonable(body),
        "severity": record["SeverityText"] or None,
    }


_STATUS_KEYS = ("running", "completed", "failed", "cancelled")


def counts_view(counts: dict[str, int]) -> dict[str, int]:
    return {"all": sum(counts.values())} | {s: counts.get(s, 0) for s in _STATUS_KEYS}


def _quantiles(values: list[float] | None) -> dict[str, float | None]:
    clean = [None if v != v else v for v in (values or [float("nan")] * 3)]
    return dict(zip(("p50", "p95", "p99"), clean, strict=True))


def _error_rate(by_status: dict[str, int]) -> float | None:
    finished = by_status["completed"] + by_status["failed"] + by_status["cancelled"]
    return by_status["failed"] / finished if finished else None


def stats_view(
    parts: dict[str, Any], since_ns: int | None, until_ns: int | None, bucket: int
) -> dict[str, Any]:
    series: dict[int, dict[str, int]] = {}
    for start, status, count in parts["series"]:
        series.setdefault(start, dict.fromkeys(_STATUS_KEYS, 0))[status] = count
    bucket_durations = {start: quantiles for start, quantiles in parts["series_durations"]}
    overall = dict.fromkeys(_STATUS_KEYS, 0) | {s: n for s, n in parts["overall"]}
    return {
        "since": rfc3339(since_ns),
        "until": rfc3339(until_ns),
        "bucket_seconds": bucket,
        "runs": {"total": sum(overall.values()), "by_status": overall,
                 "error_rate": _error_rate(overall)},
        "duration_ms": _quantiles(parts["durations"][0][0] if parts["durations"] else None),
        "series": [
            {"bucket_start": rfc3339(start * 1_000_000_000), "by_status": by_status,
             "error_rate": _error_rate(by_status),
             "duration_ms": _quantiles(bucket_durations.get(start))}
            for start, by_status in sorted(series.items())
        ],
        "by_model": [
            {"model": model, "calls": calls, "tokens": {"input": i, "output": o, "total": t},
             "cost_usd": usd(cost)}
            for model, calls, i, o, t, cost in parts["by_model"]
        ],
        "by_run_name": [
            {"name": name, "runs": runs, "tokens": {"input": i, "output": o, "total": t},
             "cost_usd": usd(cost), "error_rate": failed / runs if runs else None}
            for name, runs, i, o, t, cost, failed in parts["by_run_name"]
        ],
    }  # fmt: skip

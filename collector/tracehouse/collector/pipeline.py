"""One export through the write path: authorise → decode → rows → batcher → written.

Both receivers hand their bytes (and a way to read the request's headers)
here, for either signal (traces or logs), and turn what comes back (or what
is raised) into their protocol's answer; every outcome is counted here.
Decoding runs on worker threads so a 16 MiB request never stalls the event
loop that serves every other client.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from collections.abc import Mapping as MappingOf
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from tracehouse.collector.batcher import Batcher, Overloaded, Rows, WriteFailed
from tracehouse.collector.decode import (
    DecodeError,
    PayloadTooLarge,
    Signal,
    UnsupportedEncoding,
    decompress,
    from_json,
    from_protobuf,
)
from tracehouse.collector.logs import log_rows
from tracehouse.collector.pricing import price
from tracehouse.collector.spans import Mapping, span_rows
from tracehouse.keys import ApiKeys, Forbidden, Unauthorized, Use
from tracehouse.metrics import EXPORTS, ITEMS


class Format(enum.Enum):
    PROTOBUF = "protobuf"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class ExportResult:
    accepted: int
    rejected: int
    error: str


@dataclass(frozen=True, slots=True)
class Limits:
    max_decompressed_bytes: int
    max_value_bytes: int
    max_spans_per_request: int = 50_000
    max_attributes: int = 1024
    max_events: int = 1024
    max_links: int = 128


def decode_export(
    body: bytes,
    fmt: Format,
    encoding: str,
    limits: Limits,
    project_id: str,
    signal: Signal = Signal.TRACES,
) -> Rows:
    """Wire bytes to rows: pure and blocking, for a worker thread (or process)."""
    raw = decompress(body, encoding, limits.max_decompressed_bytes)
    decoded = from_protobuf(raw, signal) if fmt is Format.PROTOBUF else from_json(raw, signal)
    if signal is Signal.TRACES:
        spans = sum(len(s.spans) for r in decoded.request.resource_spans for s in r.scope_spans)
        if spans > limits.max_spans_per_request:
            raise PayloadTooLarge(
                f"{spans} spans in one request; the limit is {limits.max_spans_per_request}"
            )
        mapping = Mapping(
            price, limits.max_value_bytes, limits.max_attributes, limits.max_events,
            limits.max_links, received_ns=time.time_ns(),
        )  # fmt: skip
        rows = span_rows(decoded.request, project_id, mapping)
    else:
        rows = log_rows(decoded.request, project_id)
    if not decoded.rejected:
        return rows
    return replace(
        rows, rejected=rows.rejected + decoded.rejected, error=decoded.error or rows.error
    )


class Pipeline:
    def __init__(
        self,
        batchers: MappingOf[Signal, Batcher],
        executor: Executor,
        limits: Limits,
        keys: ApiKeys,
    ) -> None:
        self._batchers = batchers
        self._executor = executor
        self._limits = limits
        self._keys = keys

    async def export(
        self,
        body: bytes,
        fmt: Format,
        header: Callable[[str], str | None],
        *,
        signal: Signal = Signal.TRACES,
        encoding: str = "",
    ) -> ExportResult:
        """Store an export in its caller's project; returns once its rows are written.

        Raises `Unauthorized` / `Forbidden` for a missing or wrong key,
        `DecodeError` (and subclasses) for bad payloads, and the batcher's
        `Overloaded` / `WriteFailed` when the client should retry.
        """
        try:
            result = await self._export(body, fmt, header, signal, encoding)
        except Exception as exc:
            EXPORTS.labels(signal.name.lower(), _OUTCOMES.get(type(exc), "invalid")).inc()
            raise
        name = signal.name.lower()
        EXPORTS.labels(name, "partial" if result.rejected else "ok").inc()
        ITEMS.labels(name, "accepted").inc(result.accepted)
        ITEMS.labels(name, "rejected").inc(result.rejected)
        return result

    async def _export(
        self,
        body: bytes,
        fmt: Format,
        header: Callable[[str], str | None],
        signal: Signal,
        encoding: str,
    ) -> ExportResult:
        project_id = self._keys.project(Use.INGEST, header)
        batcher = self._batchers[signal]
        batcher.check_capacity()
        rows = await asyncio.get_running_loop().run_in_executor(
            self._executor, decode_export, body, fmt, encoding, self._limits, project_id, signal
        )
        if rows.count:
            await batcher.submit(rows)
        return ExportResult(rows.count, rows.rejected, rows.error)


_OUTCOMES: dict[type[Exception], str] = {
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
    PayloadTooLarge: "too_large",
    UnsupportedEncoding: "unsupported",
    DecodeError: "invalid",
    Overloaded: "overloaded",
    WriteFailed: "write_failed",
}

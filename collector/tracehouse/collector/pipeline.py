"""One export through the write path: decode → rows → batcher → written.

Both receivers hand their bytes here, for either signal (traces or logs),
and turn what comes back (or what is raised) into their protocol's answer.
Decoding runs on worker threads so a 16 MiB request never stalls the event
loop that serves every other client.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping as MappingOf
from concurrent.futures import Executor
from dataclasses import dataclass, replace

from tracehouse.collector.batcher import Batcher, Rows
from tracehouse.collector.decode import Signal, decompress, from_json, from_protobuf
from tracehouse.collector.logs import log_rows
from tracehouse.collector.pricing import price
from tracehouse.collector.spans import Mapping, span_rows


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
        rows = span_rows(decoded.request, project_id, Mapping(price, limits.max_value_bytes))
    else:
        rows = log_rows(decoded.request, project_id)
    if not decoded.rejected:
        return rows
    return replace(
        rows, rejected=rows.rejected + decoded.rejected, error=decoded.error or rows.error
    )


class Pipeline:
    def __init__(
        self, batchers: MappingOf[Signal, Batcher], executor: Executor, limits: Limits
    ) -> None:
        self._batchers = batchers
        self._executor = executor
        self._limits = limits

    async def export(
        self,
        body: bytes,
        fmt: Format,
        *,
        signal: Signal = Signal.TRACES,
        encoding: str = "",
        project_id: str = "default",
    ) -> ExportResult:
        """Store an export; returns once its rows are written.

        Raises `DecodeError` (and subclasses) for bad payloads, and the
        batcher's `Overloaded` / `WriteFailed` when the client should retry.
        """
        batcher = self._batchers[signal]
        batcher.check_capacity()
        rows = await asyncio.get_running_loop().run_in_executor(
            self._executor, decode_export, body, fmt, encoding, self._limits, project_id, signal
        )
        if rows.count:
            await batcher.submit(rows)
        return ExportResult(rows.count, rows.rejected, rows.error)

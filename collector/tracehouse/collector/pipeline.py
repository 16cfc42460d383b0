"""One export through the write path: decode → span rows → batcher → written.

Both receivers hand their bytes here and turn what comes back (or what is
raised) into their protocol's answer. Decoding runs on worker threads so a
16 MiB request never stalls the event loop that serves every other client.
"""

from __future__ import annotations

import asyncio
import enum
from concurrent.futures import Executor
from dataclasses import dataclass

from tracehouse.collector.batcher import Batcher
from tracehouse.collector.decode import decompress, traces_from_json, traces_from_protobuf
from tracehouse.collector.pricing import price
from tracehouse.collector.spans import Mapping, SpanRows, span_rows


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
    body: bytes, fmt: Format, encoding: str, limits: Limits, project_id: str
) -> SpanRows:
    """Wire bytes to span rows: pure and blocking, for a worker thread (or process)."""
    raw = decompress(body, encoding, limits.max_decompressed_bytes)
    decoded = traces_from_protobuf(raw) if fmt is Format.PROTOBUF else traces_from_json(raw)
    rows = span_rows(decoded.request, project_id, Mapping(price, limits.max_value_bytes))
    if not decoded.rejected:
        return rows
    return SpanRows(
        rows.columns, rows.count, rows.rejected + decoded.rejected, decoded.error or rows.error
    )


class TracePipeline:
    def __init__(self, batcher: Batcher, executor: Executor, limits: Limits) -> None:
        self._batcher = batcher
        self._executor = executor
        self._limits = limits

    async def export(
        self, body: bytes, fmt: Format, *, encoding: str = "", project_id: str = "default"
    ) -> ExportResult:
        """Store an export; returns once its spans are written.

        Raises `DecodeError` (and subclasses) for bad payloads, and the
        batcher's `Overloaded` / `WriteFailed` when the client should retry.
        """
        self._batcher.check_capacity()
        rows = await asyncio.get_running_loop().run_in_executor(
            self._executor, decode_export, body, fmt, encoding, self._limits, project_id
        )
        if rows.count:
            await self._batcher.submit(rows)
        return ExportResult(rows.count, rows.rejected, rows.error)

"""One export through the write path: authorise → prepare (in a worker) → batcher → written.

Both receivers hand their bytes (and a way to read the request's headers)
here, for either signal (traces or logs), and turn what comes back (or what
is raised) into their protocol's answer; every outcome is counted here.
Decoding, mapping and encoding run in the decode workers, so a 16 MiB
request never stalls the event loop that serves every other client.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass

from tracehouse.collector.batcher import Batcher, Overloaded, WriteFailed
from tracehouse.collector.decode import DecodeError, PayloadTooLarge, Signal, UnsupportedEncoding
from tracehouse.collector.prepare import Format, Limits, prepare_export
from tracehouse.collector.workers import Workers
from tracehouse.keys import ApiKeys, Forbidden, Unauthorized, Use
from tracehouse.metrics import EXPORTS, ITEMS


@dataclass(frozen=True, slots=True)
class ExportResult:
    accepted: int
    rejected: int
    error: str


class Pipeline:
    def __init__(
        self,
        batchers: MappingOf[Signal, Batcher],
        workers: Workers,
        limits: Limits,
        keys: ApiKeys,
    ) -> None:
        self._batchers = batchers
        self._workers = workers
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
        block = await self._workers.run(
            prepare_export, body, fmt, encoding, self._limits, project_id, signal
        )
        if block.count:
            await batcher.submit(block)
        return ExportResult(block.count, block.rejected, block.error)


_OUTCOMES: dict[type[Exception], str] = {
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
    PayloadTooLarge: "too_large",
    UnsupportedEncoding: "unsupported",
    DecodeError: "invalid",
    Overloaded: "overloaded",
    WriteFailed: "write_failed",
}

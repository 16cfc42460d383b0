"""Rows → ClickHouse Native bytes, in the decode workers.

Native is ClickHouse's own columnar wire format, and blocks of one table
concatenate into one insert. Encoding in the worker process that mapped the
rows leaves the process that owns ClickHouse only bytes to join and hand
over: no per-value Python work contends there with inserts and reads.
"""

from __future__ import annotations

from collections.abc import Sequence

from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.insert import InsertContext
from clickhouse_connect.driver.transform import NativeTransform

from tracehouse.collector.batcher import Block, Rows
from tracehouse.schema.rows import (
    LOG_COLUMNS,
    LOGS_TABLE,
    SPAN_COLUMNS,
    SPANS_TABLE,
    WRITTEN_LOG_COLUMNS,
    WRITTEN_SPAN_COLUMNS,
    Column,
)


class Encoder:
    """Rows of one table, columns in its written order, to a Native block."""

    def __init__(self, table: str, columns: Sequence[Column], names: Sequence[str]) -> None:
        types = {c.name: c.type for c in columns}
        self.table = table
        self.names = tuple(names)
        self._types = [get_from_name(types[name]) for name in names]
        self._project = names.index("ProjectId")
        self._trace = names.index("TraceId")

    def encode(self, rows: Rows) -> Block:
        # The runs the rows touch travel with them, for the live feed.
        runs = frozenset(zip(rows.columns[self._project], rows.columns[self._trace], strict=True))
        if not rows.count:
            return Block(b"", 0, rows.rejected, rows.error, runs)
        context = InsertContext(
            self.table, self.names, self._types, list(rows.columns), column_oriented=True
        )
        chunks = list(NativeTransform.build_insert(context))
        if context.insert_exception is not None:
            raise context.insert_exception
        # The first chunk opens with the INSERT statement an HTTP body carries.
        chunks[0] = chunks[0].partition(b"FORMAT Native\n")[2]
        return Block(b"".join(chunks), rows.count, rows.rejected, rows.error, runs)


SPAN_ENCODER = Encoder(SPANS_TABLE, SPAN_COLUMNS, WRITTEN_SPAN_COLUMNS)
LOG_ENCODER = Encoder(LOGS_TABLE, LOG_COLUMNS, WRITTEN_LOG_COLUMNS)

"""The ClickHouse writer: rows in, one columnar INSERT per batch.

The one place the collector meets ClickHouse errors; they leave as
`StorageError`. One insert context per table is made at start and reused,
so no batch pays for a DESCRIBE. Once a batch is written, `on_written`
hears of it (the live feed of the query API's WebSockets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.collector.batcher import Rows
from tracehouse.metrics import BATCH_ROWS, WRITE_SECONDS
from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.rows import (
    LOGS_TABLE,
    SPANS_TABLE,
    WRITTEN_LOG_COLUMNS,
    WRITTEN_SPAN_COLUMNS,
)

log = logging.getLogger(__name__)

# The batcher already groups exports; ClickHouse's own async-insert buffer
# would only add a second wait in front of the part being written. Rows are
# partitioned by day of their own clocks, and one export may span many days
# (replayed history, skewed clocks): that must not fail the insert.
INSERT_SETTINGS = {"async_insert": 0, "throw_on_max_partitions_per_insert_block": 0}


class TableWriter:
    def __init__(
        self,
        client: Client,
        table: str,
        columns: Sequence[str],
        on_written: Callable[[Rows], None] | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._on_written = on_written
        self._context = client.create_insert_context(
            table, column_names=list(columns), column_oriented=True, settings=INSERT_SETTINGS
        )

    def write(self, rows: Rows) -> None:
        """Insert the rows; blocking, so call it from a worker thread."""
        self._context.data = list(rows.columns)
        started = time.perf_counter()
        try:
            self._client.insert(context=self._context)
        except (ClickHouseError, OSError) as exc:
            message = f"insert of {rows.count} rows into {self._table} failed: {exc}"
            raise StorageError(message) from exc
        finally:
            self._context.data = None
        WRITE_SECONDS.labels(self._table).observe(time.perf_counter() - started)
        BATCH_ROWS.labels(self._table).observe(rows.count)
        if self._on_written:
            self._on_written(rows)

    async def write_async(self, rows: Rows) -> None:
        # chDB and the HTTP client both block; the event loop must not.
        await asyncio.to_thread(self.write, rows)


Written = Callable[[Rows], None] | None


def span_writer(client: Client, on_written: Written = None) -> TableWriter:
    return TableWriter(client, SPANS_TABLE, WRITTEN_SPAN_COLUMNS, on_written)


def log_writer(client: Client, on_written: Written = None) -> TableWriter:
    return TableWriter(client, LOGS_TABLE, WRITTEN_LOG_COLUMNS, on_written)

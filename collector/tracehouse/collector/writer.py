"""The ClickHouse writer: encoded blocks in, one Native INSERT per batch.

The one place the collector meets ClickHouse errors; they leave as
`StorageError`. The blocks come encoded from the decode workers, so a write
hands bytes to ClickHouse and does no per-row work here. Once a batch is
written, `on_written` hears of it (the live feed of the query API's
WebSockets).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.collector.batcher import Block
from tracehouse.collector.encode import LOG_ENCODER, SPAN_ENCODER, Encoder
from tracehouse.metrics import BATCH_ROWS, WRITE_SECONDS
from tracehouse.schema.clickhouse import StorageError

log = logging.getLogger(__name__)

# The batcher already groups exports; ClickHouse's own async-insert buffer
# would only add a second wait in front of the part being written. Rows are
# partitioned by day of their own clocks, and one export may span many days
# (replayed history, skewed clocks): that must not fail the insert.
INSERT_SETTINGS = {"async_insert": 0, "throw_on_max_partitions_per_insert_block": 0}

Written = Callable[[Block], None] | None


class TableWriter:
    def __init__(self, client: Client, encoder: Encoder, on_written: Written = None) -> None:
        self._client = client
        self._table = encoder.table
        self._columns = encoder.names
        self._on_written = on_written

    def write(self, block: Block) -> None:
        """Insert the block; blocking, so call it from a worker thread."""
        started = time.perf_counter()
        try:
            self._client.raw_insert(
                self._table, self._columns, block.data, settings=INSERT_SETTINGS, fmt="Native"
            )
        except (ClickHouseError, OSError) as exc:
            message = f"insert of {block.count} rows into {self._table} failed: {exc}"
            raise StorageError(message) from exc
        WRITE_SECONDS.labels(self._table).observe(time.perf_counter() - started)
        BATCH_ROWS.labels(self._table).observe(block.count)
        if self._on_written:
            self._on_written(block)

    async def write_async(self, block: Block) -> None:
        # chDB and the HTTP client both block; the event loop must not.
        await asyncio.to_thread(self.write, block)


def span_writer(client: Client, on_written: Written = None) -> TableWriter:
    return TableWriter(client, SPAN_ENCODER, on_written)


def log_writer(client: Client, on_written: Written = None) -> TableWriter:
    return TableWriter(client, LOG_ENCODER, on_written)

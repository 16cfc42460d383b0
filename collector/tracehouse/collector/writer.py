"""The ClickHouse writer: span rows in, one columnar INSERT per batch.

The one place the collector meets ClickHouse errors; they leave as
`StorageError`. One insert context is made at start and reused, so no batch
pays for a DESCRIBE.
"""

from __future__ import annotations

import asyncio
import logging

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.collector.spans import SpanRows
from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.rows import SPANS_TABLE, WRITTEN_SPAN_COLUMNS

log = logging.getLogger(__name__)

# The batcher already groups exports; ClickHouse's own async-insert buffer
# would only add a second wait in front of the part being written. Spans are
# partitioned by day of their own clocks, and one export may span many days
# (replayed history, skewed clocks): that must not fail the insert.
INSERT_SETTINGS = {"async_insert": 0, "throw_on_max_partitions_per_insert_block": 0}


class SpanWriter:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._context = client.create_insert_context(
            SPANS_TABLE,
            column_names=list(WRITTEN_SPAN_COLUMNS),
            column_oriented=True,
            settings=INSERT_SETTINGS,
        )

    def write(self, rows: SpanRows) -> None:
        """Insert the rows; blocking, so call it from a worker thread."""
        self._context.data = list(rows.columns)
        try:
            self._client.insert(context=self._context)
        except (ClickHouseError, OSError) as exc:
            raise StorageError(f"insert of {rows.count} spans failed: {exc}") from exc
        finally:
            self._context.data = None

    async def write_async(self, rows: SpanRows) -> None:
        # chDB and the HTTP client both block; the event loop must not.
        await asyncio.to_thread(self.write, rows)

"""All SQL of the query API, with bound parameters only.

The one place the query API meets ClickHouse; its errors leave as
`StorageError`. Calls block (chDB and the HTTP client both do), so the
routes run them on worker threads.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.schema.clickhouse import StorageError
from tracehouse.schema.migrations import MIGRATIONS, applied_versions


class Store:
    def __init__(self, client: Client) -> None:
        self._client = client

    def ready(self) -> bool:
        """ClickHouse answers and every migration this build knows is applied."""
        try:
            done = applied_versions(self._client)
        except (ClickHouseError, OSError) as exc:
            raise StorageError(f"ClickHouse is not ready: {exc}") from exc
        return all(m.version in done for m in MIGRATIONS)

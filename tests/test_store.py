"""The query API's store: it reads through several clients (a slow read holds up no
other), and warms what a first read would wait for."""

from __future__ import annotations

import threading
import time

from clickhouse_connect.driver.client import Client

from builders import Runs, chat, new_id, span
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client


def order_of_a_slow_and_a_fast_read(store: Store) -> list[str]:
    done: list[str] = []

    def slow() -> None:
        store._query("SELECT sleep(1)", {})  # as a big tree's or the stats' reads are
        done.append("slow")

    reader = threading.Thread(target=slow)
    reader.start()
    time.sleep(0.2)  # the slow read is under way
    store.now_ns()
    done.append("fast")
    reader.join()
    return done


def test_a_slow_read_holds_up_no_other_read(dsn: str) -> None:
    clients = [open_client(dsn) for _ in range(2)]
    try:
        assert order_of_a_slow_and_a_fast_read(Store(clients[:1])) == ["slow", "fast"]
        assert order_of_a_slow_and_a_fast_read(Store(clients)) == ["fast", "slow"]
    finally:
        for client in clients:
            client.close()


def cached_marks(client: Client) -> int:
    """How many columns' marks ClickHouse holds in memory (every database of the engine)."""
    return int(client.query("SELECT value FROM system.metrics WHERE metric = 'MarkCacheFiles'")
               .result_rows[0][0])  # fmt: skip


def test_warming_loads_the_marks_and_keys_a_first_read_needs(db: Client) -> None:
    built = Runs(db)
    trace, root = new_id(16), new_id(8)
    built.send(
        span("agent", trace, root, start=0, end=10),
        span("chat", trace, new_id(8), root, start=1, end=9, attributes=chat((3, 4))),
    )
    before = cached_marks(db)
    built.store.warm()
    # The new parts' marks, now in memory: the spans', runs' and run list's.
    assert cached_marks(db) > before
    keys = db.query(
        "SELECT sum(primary_key_bytes_in_memory) FROM system.parts"
        " WHERE active AND table = 'spans' AND database = currentDatabase()"
    )
    assert keys.result_rows[0][0] > 0


def test_warming_is_best_effort(db: Client) -> None:
    """Where ClickHouse refuses (here: no tables yet), the store starts cold, no error."""
    Store(db).warm()
    assert db.query(
        "SELECT count() FROM system.tables WHERE database = currentDatabase()"
    ).result_rows == [(0,)]

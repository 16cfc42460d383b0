"""The query API's store reads through several clients: a slow read holds up no other."""

from __future__ import annotations

import threading
import time

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

"""The run list reads ClickHouse's snapshot of every run, and runs that moved since fresh.

Whether a run comes from the snapshot or from `runs`, the list, its counts
and its pages say the same: these tests build runs of every status, take a
snapshot (a margin of 0, so every run the snapshot saw is read from it),
change some runs and add others, and compare with the list as read before
any snapshot existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from builders import Runs, block_of, new_id, pending, span
from tracehouse.collector.writer import span_writer
from tracehouse.query_api import sql
from tracehouse.query_api.runs import TreeCache, run_page
from tracehouse.query_api.sql import RunFilter
from tracehouse.query_api.store import Store
from tracehouse.schema.ddl import (
    RUN_SNAPSHOT,
    RUN_SNAPSHOT_SELECT,
    RUNS,
    SINGLE_NODE,
    SNAPSHOT_REFRESH_S,
    Layout,
    create_refreshed_view,
    create_table,
)
from tracehouse.schema.migrations import MIGRATIONS, MIGRATIONS_TABLE, migrate

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
STATUSES = ("running", "completed", "failed", "cancelled")


def refresh(db: Client) -> None:
    db.command("SYSTEM REFRESH VIEW run_snapshot_mv")
    db.command("SYSTEM WAIT VIEW run_snapshot_mv")


def snapshot_size(db: Client) -> int:
    return int(db.query("SELECT count() FROM run_snapshot").result_rows[0][0])


def every_kind_of_run(send: Callable[..., None], start: int) -> dict[str, bytes]:
    """One run of each status rule (DESIGN.md §3), written by `send`; trace ids by kind."""
    made: dict[str, bytes] = {}

    def trace(label: str) -> bytes:
        made[label] = new_id(16)
        return made[label]

    t, root = trace("completed"), new_id(8)
    send(span("invoke_agent helper", t, root, start=start, end=start + 9, attributes=AGENT))
    t, root = trace("failed"), new_id(8)
    send(span("invoke_agent helper", t, root, start=start + 1, end=start + 9,
                   attributes=AGENT, error="boom"))  # fmt: skip
    t, root = trace("cancelled"), new_id(8)
    send(span("invoke_agent helper", t, root, start=start + 2, end=start + 9,
                   attributes=AGENT | {"tracehouse.run.status": "cancelled"}))  # fmt: skip
    t, root = trace("running, root missing"), new_id(8)
    send(span("chat", t, new_id(8), root, start=start + 3, end=start + 4))
    t, root = trace("failed, root missing"), new_id(8)
    send(span("chat", t, new_id(8), root, start=start + 4, end=start + 5, error="rate"))
    t, root = trace("running, pending root"), new_id(8)
    send(pending(span("invoke_agent helper", t, root, start=start + 5, attributes=AGENT)))
    t, root, agent = trace("failed, wrapper root"), new_id(8), new_id(8)
    send(
        span("POST /chat", t, root, start=start + 6, end=start + 9),
        span("invoke_agent helper", t, agent, root, start=start + 7, end=start + 8,
             attributes=AGENT, error="boom"),
    )  # fmt: skip
    parent = made["completed"]
    t = trace("sub-run")
    send(span("invoke_agent worker", t, new_id(8), start=start + 8, end=start + 9,
                   attributes=AGENT, links=[(parent, new_id(8))]))  # fmt: skip
    return made


def listing(store: Store, f: RunFilter, limit: int = 500) -> list[tuple[str, str, str]]:
    """Every run of the list, newest first, paged by `limit`: (trace, run, status)."""
    found: list[tuple[str, str, str]] = []
    cursor = None
    while True:
        page = run_page(store, "default", f, cursor, limit)
        found += [(r.trace_id, r.run_id, r.status) for r in page.runs]
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


def counts(store: Store, f: RunFilter) -> dict[str, int]:
    return run_page(store, "default", f, None, 1).counts


def answers(store: Store) -> dict[str, Any]:
    """What the list answers, under each filter that matters here."""
    filters = {
        "all": RunFilter(),
        "with sub-runs": RunFilter(include_subruns=True),
        "by name": RunFilter(q="HELP"),
        "by trigger": RunFilter(trigger="subagent", include_subruns=True),
        **{status: RunFilter(statuses=(status,)) for status in STATUSES},
    }
    return {
        label: (listing(store, f), listing(store, f, limit=2), counts(store, f))
        for label, f in filters.items()
    }


def test_the_list_from_the_snapshot_is_the_list_from_runs(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    fresh = Store(db, snapshot_margin_s=0)
    before = answers(fresh)

    refresh(db)

    assert snapshot_size(db) == len(made)
    assert answers(fresh) == before
    assert before["all"][2] == {"running": 2, "completed": 1, "failed": 3, "cancelled": 1}
    shown = {trace for trace, _, _ in before["all"][0]}
    assert shown == {t.hex() for label, t in made.items() if label != "sub-run"}


def test_runs_that_moved_after_the_snapshot_are_read_fresh(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    refresh(db)
    store = Store(db, snapshot_margin_s=0)
    # The root arrives for a run listed as running; a child fails under a
    # root-less one that was running; a pending root ends; new runs arrive.
    missing = runs.tree(made["running, root missing"]).run.run_id
    runs.send(span("invoke_agent helper", made["running, root missing"], bytes.fromhex(missing),
                   start=0, end=20, attributes=AGENT))  # fmt: skip
    pending_root = runs.tree(made["running, pending root"]).run.run_id
    runs.send(span("invoke_agent helper", made["running, pending root"],
                   bytes.fromhex(pending_root), start=5, end=20, attributes=AGENT))  # fmt: skip
    newer = every_kind_of_run(runs.send, start=100)

    after = answers(store)

    statuses = {trace: status for trace, _, status in after["all"][0]}
    assert statuses[made["running, root missing"].hex()] == "completed"
    assert statuses[made["running, pending root"].hex()] == "completed"
    assert len(statuses) == 2 * (len(made) - 1)
    assert list(statuses)[: len(newer) - 1] == [
        t.hex() for label, t in reversed(newer.items()) if label != "sub-run"
    ]
    # The same when the queries find the moved runs themselves (too many to
    # bind), and as a list read with no snapshot at all.
    monkeypatch.setattr(sql, "FRESH_INLINE_MAX", 0)
    assert answers(store) == after
    db.command("TRUNCATE TABLE run_snapshot")
    assert answers(store) == after


def test_counts_agree_with_the_list_for_every_status(db: Client) -> None:
    runs = Runs(db)
    every_kind_of_run(runs.send, start=0)
    refresh(db)
    every_kind_of_run(runs.send, start=100)
    store = Store(db, snapshot_margin_s=0)
    for f in (RunFilter(), RunFilter(include_subruns=True), RunFilter(q="helper")):
        shown = counts(store, f)
        for status in STATUSES:
            listed = listing(store, replace(f, statuses=(status,)), limit=3)
            assert len(listed) == shown.get(status, 0), (f, status)
            assert {s for _, _, s in listed} <= {status}
        assert sum(shown.values()) == len(listing(store, f))


def test_within_the_margin_runs_the_snapshot_saw_are_read_fresh(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    refresh(db)
    # Default margin (10 s): everything arrived within it, so nothing is taken
    # from the snapshot; emptying the snapshot changes no answer.
    store = Store(db)
    before = answers(store)
    db.command("TRUNCATE TABLE run_snapshot")
    assert answers(store) == before
    assert len(before["all"][0]) == len(made) - 1


def test_a_page_of_headers_is_read_again_only_for_runs_that_moved(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    cache = TreeCache(1000)
    store = Store(db)
    first = run_page(store, "default", RunFilter(), None, 50, cache)
    missing = runs.tree(made["running, root missing"]).run.run_id
    runs.send(span("invoke_agent helper", made["running, root missing"], bytes.fromhex(missing),
                   start=0, end=20, attributes=AGENT))  # fmt: skip

    again = run_page(store, "default", RunFilter(), None, 50, cache)

    assert again.runs == run_page(store, "default", RunFilter(), None, 50).runs
    moved = {r.trace_id: r for r in again.runs}[made["running, root missing"].hex()]
    assert (moved.status, moved.step_count) == ("completed", 1)
    unmoved = [r for r in again.runs if r.trace_id != moved.trace_id]
    assert unmoved == [r for r in first.runs if r.trace_id != moved.trace_id]


def test_a_database_of_version_5_gets_the_snapshot(db: Client) -> None:
    for statement in create_table(MIGRATIONS_TABLE, SINGLE_NODE, 0):
        db.command(statement)
    for migration in MIGRATIONS[:5]:
        for statement in migration.statements(SINGLE_NODE, 0):
            db.command(statement)
        db.insert("tracehouse_migrations", [[migration.version, migration.name]],
                  column_names=["version", "name"])  # fmt: skip
    writer = span_writer(db)  # as the old version wrote them: Runs would migrate first
    store = Store(db, snapshot_margin_s=0)
    made = every_kind_of_run(lambda *spans: writer.write(block_of(spans)), start=0)

    assert migrate(db, SINGLE_NODE, 0) == [6]
    refresh(db)

    assert snapshot_size(db) == len(made)
    after = answers(store)
    assert after["all"][2] == {"running": 2, "completed": 1, "failed": 3, "cancelled": 1}
    db.command("TRUNCATE TABLE run_snapshot")
    assert answers(store) == after


def test_on_a_cluster_every_replica_refreshes_its_own_shard_snapshot(db: Client) -> None:
    layout = Layout(cluster="tracehouse")
    local, distributed = create_table(RUN_SNAPSHOT, layout, 0)
    assert "ENGINE = MergeTree" in local  # not replicated: each replica writes its own
    assert "Distributed(`tracehouse`, currentDatabase(), `run_snapshot_local`" in distributed
    view = create_refreshed_view(
        "run_snapshot_mv", RUN_SNAPSHOT, RUNS, RUN_SNAPSHOT_SELECT, SNAPSHOT_REFRESH_S, layout
    )
    assert "ON CLUSTER `tracehouse` REFRESH EVERY" in view
    assert "TO `run_snapshot_local`" in view
    assert "FROM `runs_local` FINAL" in view
    for statement in (local, distributed, view):
        # formatQuery parses without executing: the engine accepts the syntax.
        formatted = db.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        assert formatted.result_rows[0][0].startswith("CREATE")

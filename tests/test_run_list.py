"""The run list: one row per run kept by the query API's refresher, and runs that moved read fresh.

Whether a run comes from `run_list` or is folded fresh from `runs`, the
list, its counts and its pages say the same: these tests build runs of every
status, refresh (with a margin of 0, so every run a refresh saw is read from
the run list), change some runs and add others, and compare with the list as
read before any refresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from clickhouse_connect.driver.client import Client

from builders import Runs, block_of, new_id, pending, span
from conftest import RunningServer
from tracehouse.collector.writer import span_writer
from tracehouse.query_api import run_list, sql
from tracehouse.query_api.run_list import RunList
from tracehouse.query_api.runs import run_page
from tracehouse.query_api.sql import RunFilter
from tracehouse.query_api.store import Store
from tracehouse.schema.ddl import RUN_LIST, SINGLE_NODE, Layout, create_table
from tracehouse.schema.migrations import MIGRATIONS, MIGRATIONS_TABLE, migrate

AGENT = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
STATUSES = ("running", "completed", "failed", "cancelled")


def listed(db: Client) -> dict[str, int]:
    """Rows of the run list by trace (the refresher's mark left out)."""
    rows = db.query(
        "SELECT trace_id, count() FROM run_list WHERE ProjectId != '' GROUP BY trace_id"
    )
    return {str(trace): int(n) for trace, n in rows.result_rows}


def marks(db: Client) -> int:
    """The refreshers' marks: the newest, and the one before it until the next refresh."""
    return int(db.query("SELECT count() FROM run_list WHERE ProjectId = ''").result_rows[0][0])


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
    # Paged two at a time only where a page mixes most runs (a page costs
    # the whole list's queries, and every filter binds the same way).
    paged = ("all", "with sub-runs", "failed")
    return {
        label: (
            listing(store, f),
            listing(store, f, limit=2) if label in paged else None,
            counts(store, f),
        )
        for label, f in filters.items()
    }


def refreshed(db: Client) -> tuple[Runs, dict[str, bytes], Store, RunList]:
    """Every kind of run, refreshed once into the run list (with a margin of 0)."""
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    refresher = RunList(store, 1)
    refresher.refresh()
    return runs, made, store, refresher


def test_the_list_from_the_run_list_is_the_list_from_runs(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    before = answers(store)

    assert RunList(store, 1).refresh() == len(made)

    assert listed(db) == {t.hex(): 1 for t in made.values()}
    assert answers(store) == before
    assert before["all"][2] == {"running": 2, "completed": 1, "failed": 3, "cancelled": 1}
    shown = {trace for trace, _, _ in before["all"][0]}
    assert shown == {t.hex() for label, t in made.items() if label != "sub-run"}


def test_runs_that_moved_are_read_fresh_then_refreshed_in_place(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, made, store, refresher = refreshed(db)
    # The root arrives for a run listed as running; a pending root ends; new
    # runs arrive.
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
    # bind), and as a list read with no run list at all.
    monkeypatch.setattr(sql, "FRESH_INLINE_MAX", 0)
    assert answers(store) == after
    monkeypatch.undo()
    # A refresh writes the moved runs anew and deletes the rows they replace:
    # one row a run, one mark.
    assert refresher.refresh() == 2 + len(newer)
    assert listed(db) == {t.hex(): 1 for t in [*made.values(), *newer.values()]}
    assert marks(db) == 2
    assert answers(store) == after
    db.command("TRUNCATE TABLE run_list")
    assert answers(store) == after


def test_counts_agree_with_the_list_for_every_status(db: Client) -> None:
    runs = Runs(db)
    every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    RunList(store, 1).refresh()
    every_kind_of_run(runs.send, start=100)
    for f in (RunFilter(), RunFilter(include_subruns=True), RunFilter(q="helper")):
        shown = counts(store, f)
        for status in STATUSES:
            found = listing(store, replace(f, statuses=(status,)), limit=3)
            assert len(found) == shown.get(status, 0), (f, status)
            assert {s for _, _, s in found} <= {status}
        assert sum(shown.values()) == len(listing(store, f))


def test_within_the_margin_runs_a_refresh_saw_are_read_fresh(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    # The default margin (5 s): everything arrived within it, so nothing is
    # taken from the run list; emptying it changes no answer.
    store = Store(db)
    RunList(store, 1).refresh()
    before = answers(store)
    db.command("TRUNCATE TABLE run_list")
    assert answers(store) == before
    assert len(before["all"][0]) == len(made) - 1


def test_refreshers_in_two_processes_leave_one_row_a_run(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    first, second = RunList(store, 1), RunList(store, 1)
    first.refresh()
    runs.send(span("chat", made["running, root missing"], new_id(8), start=1, end=2))
    # The second starts from the last mark, the first from its own refresh:
    # both fold the run that moved, in either order.
    assert second.refresh() == first.refresh() == 1
    assert second.refresh() == 0  # nothing moved since its own refresh

    assert listed(db) == {t.hex(): 1 for t in made.values()}
    assert marks(db) == 2


def stored_rows(db: Client, patches: bool) -> int:
    """The run list's runs' rows, with the patch parts of its deletes applied on read or not."""
    query = "SELECT count() FROM run_list WHERE ProjectId != ''"
    return int(db.query(query, settings={"apply_patch_parts": int(patches)}).result_rows[0][0])


def test_the_refreshes_deletes_are_written_into_the_parts(
    db: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, made, _, refresher = refreshed(db)
    runs.send(span("chat", made["completed"], new_id(8), start=1, end=2))
    # A refresh between rechecks: the replaced row is only masked, on read.
    assert refresher.refresh() == 1
    assert stored_rows(db, patches=True) == len(made)
    assert stored_rows(db, patches=False) == len(made) + 1

    monkeypatch.setattr(run_list, "RECHECK_EVERY", 1)
    runs.send(span("chat", made["failed"], new_id(8), start=1, end=2))
    assert refresher.refresh() == 1
    deadline = time.monotonic() + 30  # the mutation runs in the background
    while stored_rows(db, patches=False) > len(made) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_rows(db, patches=True) == stored_rows(db, patches=False) == len(made)
    assert listed(db) == {t.hex(): 1 for t in made.values()}


def test_a_refresh_stopped_before_its_delete_is_finished_by_the_next(db: Client) -> None:
    runs, made, store, _ = refreshed(db)
    runs.send(span("chat", made["completed"], new_id(8), start=1, end=2))
    fold, _delete, _mark = sql.refresh_run_list(moved_bound=False)
    db.command(fold, parameters={"since": store.run_list_mark()})  # and the process died here

    assert listed(db)[made["completed"].hex()] == 2
    assert listing(store, RunFilter()) == listing(Store(db, run_list_margin_s=1e6), RunFilter())

    assert RunList(store, 1).refresh() == 1
    assert listed(db) == {t.hex(): 1 for t in made.values()}


def at_version(db: Client, version: int) -> None:
    """The schema as a release that stopped at this migration left it."""
    for statement in create_table(MIGRATIONS_TABLE, SINGLE_NODE, 0):
        db.command(statement)
    for migration in MIGRATIONS[:version]:
        for statement in migration.statements(SINGLE_NODE, 0):
            db.command(statement)
        db.insert("tracehouse_migrations", [[migration.version, migration.name]],
                  column_names=["version", "name"])  # fmt: skip


def test_a_database_of_version_5_gets_the_run_list(db: Client) -> None:
    at_version(db, 5)
    writer = span_writer(db)  # as the old version wrote them: Runs would migrate first
    made = every_kind_of_run(lambda *spans: writer.write(block_of(spans)), start=0)
    store = Store(db, run_list_margin_s=0)

    assert migrate(db, SINGLE_NODE, 30) == [6, 7, 8]
    before = answers(store)  # nothing refreshed yet: every run read fresh
    assert RunList(store, 1).refresh() == len(made)

    assert listed(db) == {t.hex(): 1 for t in made.values()}
    assert answers(store) == before
    assert before["all"][2] == {"running": 2, "completed": 1, "failed": 3, "cancelled": 1}
    ttl = db.query("SELECT engine_full FROM system.tables WHERE name = 'run_list'")
    assert "TTL toDateTime(last_seen) + toIntervalDay(30)" in ttl.result_rows[0][0]


def test_a_database_of_version_6_replaces_rows_through_patch_parts(db: Client) -> None:
    at_version(db, 6)
    writer = span_writer(db)
    made = every_kind_of_run(lambda *spans: writer.write(block_of(spans)), start=0)
    store = Store(db, run_list_margin_s=0)
    refresher = RunList(store, 1)
    refresher.refresh()  # rows written before the migration

    assert migrate(db, SINGLE_NODE, 30) == [7, 8]
    writer.write(block_of([span("chat", made["completed"], new_id(8), start=1, end=2)]))
    assert refresher.refresh() == 1

    assert listed(db) == {t.hex(): 1 for t in made.values()}
    # The replaced row is masked by a patch part, not by rewriting every part.
    patches = db.query(
        "SELECT count() FROM system.parts WHERE table = 'run_list' AND startsWith(name, 'patch-')"
    )
    assert patches.result_rows[0][0] > 0


def test_a_database_of_version_7_finds_listed_runs_by_id_off_an_index(db: Client) -> None:
    at_version(db, 7)
    writer = span_writer(db)
    made = every_kind_of_run(lambda *spans: writer.write(block_of(spans)), start=0)
    store = Store(db, run_list_margin_s=0)
    RunList(store, 1).refresh()  # rows written before the migration

    assert migrate(db, SINGLE_NODE, 30) == [8]
    run_id = Runs(db).tree(made["completed"]).run.run_id
    assert Store(db).find_trace("default", run_id) == made["completed"].hex()
    plan = db.query(
        "EXPLAIN indexes = 1 " + sql.FIND_LISTED_SQL,
        parameters={"project": "default", "id": run_id},
    )
    assert "idx_run_id" in "\n".join(row[0] for row in plan.result_rows)


def test_the_service_keeps_the_run_list(server: RunningServer, db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    deadline = time.monotonic() + 30
    while listed(db) != {t.hex(): 1 for t in made.values()}:
        assert time.monotonic() < deadline, listed(db)
        time.sleep(0.2)
    answer = httpx.get(f"{server.api_base}/api/v1/runs", params={"limit": 100}).json()
    assert {r["trace_id"] for r in answer["runs"]} == {
        t.hex() for label, t in made.items() if label != "sub-run"
    }
    assert answer["counts"] == {"all": 7, "running": 2, "completed": 1, "failed": 3, "cancelled": 1}


def test_on_a_cluster_the_run_list_is_sharded_by_trace(db: Client) -> None:
    local, distributed = create_table(RUN_LIST, Layout(cluster="tracehouse"), 30)
    assert "ENGINE = ReplicatedMergeTree" in local
    assert (
        "Distributed(`tracehouse`, currentDatabase(), `run_list_local`, cityHash64(trace_id))"
        in (distributed)
    )
    for statement in (local, distributed):
        # formatQuery parses without executing: the engine accepts the syntax.
        formatted = db.query("SELECT formatQuery({q:String})", parameters={"q": statement})
        assert formatted.result_rows[0][0].startswith("CREATE")


def test_the_refreshers_mark_outlives_the_retention(db: Client) -> None:
    migrate(db, SINGLE_NODE, 30)
    runs = Runs(db)
    every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    RunList(store, 1).refresh()
    mark = store.run_list_mark()

    # A merge applies the TTL: a mark stamped 1970 would be dropped, and every
    # run read fresh again.
    db.command("OPTIMIZE TABLE run_list FINAL")

    assert store.run_list_mark() == mark > 0
    assert marks(db) == 1


def test_a_row_that_missed_a_change_is_found_and_folded_again(db: Client) -> None:
    runs = Runs(db)
    made = every_kind_of_run(runs.send, start=0)
    store = Store(db, run_list_margin_s=0)
    RunList(store, 1).refresh()
    trace = made["running, root missing"]
    root = bytes.fromhex(runs.tree(trace).run.run_id)
    runs.send(span("invoke_agent helper", trace, root, start=0, end=20, attributes=AGENT))
    # A refresher that began after this arrival without seeing it (an insert
    # visible later than its stamp and the margin, or one healed at start
    # with its old stamps) would trust the row it has.
    late = RunList(store, 1)
    late._since = store.now_ns()
    runs.send(span("invoke_agent other", new_id(16), new_id(8), start=30, end=31,
                   attributes=AGENT))  # fmt: skip

    assert late.refresh() == 2  # the new run, and the one whose row missed its root

    statuses = {t: s for t, _, s in listing(store, RunFilter())}
    assert statuses[trace.hex()] == "completed"
    assert listed(db)[trace.hex()] == 1

"""The REST routes of DESIGN.md §4: thin — parse, ask `runs`, answer with a view.

Store calls block, so they run on worker threads; answers are serialized
with orjson straight from the views' dicts (the response models document
them in the OpenAPI schema).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from tracehouse.keys import ApiKeys, Use
from tracehouse.query_api import models, params, views
from tracehouse.query_api.assembly import find
from tracehouse.query_api.runs import (
    TreeCache,
    first_level,
    read_whole,
    run_page,
    run_step,
    run_tree,
)
from tracehouse.query_api.sql import RunFilter
from tracehouse.query_api.store import Store


class NotFound(Exception):
    """No such run or step in the caller's project."""


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": models.ErrorEnvelope, "description": text}
    for code, text in ((401, "No API key, or an unknown one (when keys are configured)"),
                       (403, "This API key may not read"), (404, "No such run or step"),
                       (422, "A parameter is invalid"), (503, "ClickHouse is unavailable"))
}  # fmt: skip

Text = Annotated[str | None, Query(max_length=1024)]

router = APIRouter(prefix="/api/v1", responses=ERRORS)


def json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def project(connection: HTTPConnection) -> str:
    """The caller's project (of a request or a WebSocket): every query is confined to it.

    Browsers cannot set headers on a WebSocket, so there the key may also
    come as `?api_key=`.
    """
    keys: ApiKeys = connection.app.state.keys

    def header(name: str) -> str | None:
        value = connection.headers.get(name)
        if value is None and name == "x-api-key" and connection.scope["type"] == "websocket":
            return connection.query_params.get("api_key")
        return value

    return keys.project(Use.READ, header)


def trees(request: Request) -> TreeCache:
    return request.app.state.trees  # type: ignore[no-any-return]


StoreDep = Annotated[Store, Depends(store)]
TreesDep = Annotated[TreeCache, Depends(trees)]
ProjectDep = Annotated[str, Depends(project)]


def run_filter(
    status: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI reads, never mutates
    q: Text = None,
    name: Text = None,
    trigger: Text = None,
    version: Text = None,
    session: Text = None,
    since: Text = None,
    until: Text = None,
    include_subruns: bool = False,
) -> RunFilter:
    return RunFilter(
        statuses=params.statuses(status),
        q=q or "",
        name=name,
        trigger=trigger,
        version=version,
        session=session,
        since_ns=params.timestamp_ns("since", since),
        until_ns=params.timestamp_ns("until", until),
        include_subruns=include_subruns,
    )


FilterDep = Annotated[RunFilter, Depends(run_filter)]


@router.get("/runs", response_model=models.RunList, summary="Runs, newest first, with counts")
async def list_runs(
    store: StoreDep,
    trees: TreesDep,
    project: ProjectDep,
    f: FilterDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Text = None,
) -> Response:
    page = await run_in_threadpool(
        run_page, store, project, f, params.decode_cursor(cursor), limit, trees
    )
    next_cursor = params.encode_cursor(*page.next_cursor) if page.next_cursor else None
    return json({
        "runs": [views.run_view(run) for run in page.runs],
        "counts": views.counts_view(page.counts),
        "next_cursor": next_cursor,
    })  # fmt: skip


@router.get("/runs/{run_id}", response_model=models.RunHeader, summary="A run's header")
async def get_run(store: StoreDep, trees: TreesDep, project: ProjectDep, run_id: str) -> Response:
    tree = await run_in_threadpool(run_tree, store, project, params.run_id(run_id), trees)
    if tree is None:
        raise NotFound(f"no run {run_id}")
    return json(views.run_view(tree.run))


@router.get("/runs/{run_id}/tree", response_model=models.RunTree, summary="A run's step tree")
async def get_tree(
    store: StoreDep,
    trees: TreesDep,
    project: ProjectDep,
    after: BackgroundTasks,
    run_id: str,
    depth: Annotated[int | None, Query(ge=0, le=views.MAX_TREE_DEPTH)] = None,
    from_step: Annotated[str | None, Query(alias="from", max_length=64)] = None,
) -> Response:
    """The nested steps of a run, sub-runs inline. `depth=N` keeps N levels below the
    tree's root (default: all, up to 100 levels); a cut step has `children: null` and its
    `child_count`. `from=<step_id>` roots the answer at that step."""
    # A first level alone needs less of a big run than its whole tree, which
    # is read once the answer is sent, for the branches opened next.
    shallow = from_step is None and depth is not None and depth <= 1
    read = first_level if shallow else run_tree
    tree = await run_in_threadpool(read, store, project, params.run_id(run_id), trees)
    if tree is None:
        raise NotFound(f"no run {run_id}")
    if shallow:
        after.add_task(read_whole, store, project, tree, trees)
    root = tree.root
    if from_step is not None:
        found = find(tree.root, params.step_id(from_step))
        if found is None:
            raise NotFound(f"no step {from_step} in run {run_id}")
        root = found[0]
    return json({"run": views.run_view(tree.run), "root": views.step_view(root, depth)})


@router.get(
    "/runs/{run_id}/steps/{step_id}", response_model=models.StepDetail, summary="One step in full"
)
async def get_step(
    store: StoreDep, trees: TreesDep, project: ProjectDep, run_id: str, step_id: str
) -> Response:
    found = await run_in_threadpool(
        run_step, store, project, params.run_id(run_id), params.step_id(step_id), trees
    )
    if found is None:
        raise NotFound(f"no step {step_id} in run {run_id}")
    return json(views.step_detail_view(*found))


@router.get("/stats", response_model=models.Stats, summary="Dashboard aggregates")
async def get_stats(
    store: StoreDep,
    project: ProjectDep,
    f: FilterDep,
    bucket: Annotated[str, Query(max_length=16)] = "1h",
) -> Response:
    """Top-level runs that started in [since, until] (default: the last 24 hours):
    runs by status, error rate and duration percentiles, overall and per bucket; tokens and
    cost by model and by run name."""
    seconds = params.bucket_seconds(bucket)
    now = time.time_ns()
    since = f.since_ns if f.since_ns is not None else now - 86_400 * 1_000_000_000
    until = f.until_ns if f.until_ns is not None else now
    if since > until:
        raise params.BadParameter("since", "must not be after until")
    if (until - since) // (seconds * 1_000_000_000) > 10_000:
        raise params.BadParameter("bucket", "gives more than 10,000 buckets for this range")
    scoped = replace(f, since_ns=since, until_ns=until, include_subruns=False)
    parts = await run_in_threadpool(store.stats, project, scoped, seconds)
    return json(views.stats_view(parts, since, until, seconds))

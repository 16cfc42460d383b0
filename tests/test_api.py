"""The query API as a client sees it: real collector in, real HTTP out, the contract of §4."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2 as otlp

from builders import BASE_NS, chat, new_id, request, span
from conftest import RunningServer, server_settings
from tracehouse.query_api import models

_databases = itertools.count()

AGENT = {"gen_ai.operation.name": "invoke_agent"}


def agent(name: str, **extra: Any) -> dict[str, Any]:
    return AGENT | {"gen_ai.agent.name": name} | extra


class Api:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=f"{server.api_base}/api/v1", timeout=30)

    def send(self, *spans: otlp.Span) -> None:
        response = httpx.post(
            f"{self.server.http_base}/v1/traces",
            content=request(spans).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200, response.text

    def get(self, path: str, expect: int = 200, /, **query: Any) -> Any:
        response = self.http.get(path, params=query)
        assert response.status_code == expect, response.text
        return response.json()


class World:
    """A small, known set of runs: names, statuses, triggers, a nested sub-run."""

    def __init__(self, api: Api) -> None:
        self.weather = (new_id(16), new_id(8))
        trace, root = self.weather
        tool, sub = new_id(8), new_id(8)
        self.tool, self.sub = tool, sub
        api.send(
            span("invoke_agent Weather_Agent", trace, root, start=100, end=200,
                 attributes=agent("Weather_Agent", **{"tracehouse.run.trigger": "scheduled",
                                  "tracehouse.run.version": "v2", "session.id": "sess-1"})),
            span("chat", trace, new_id(8), root, start=110, end=120, attributes=chat((100, 10))),
            span("execute_tool lookup", trace, tool, root, start=121, end=180,
                 attributes={"gen_ai.tool.name": "lookup",
                             "gen_ai.tool.call.arguments": '{"city": "Paris"}',
                             "gen_ai.tool.call.result": "sunny", "retries": 2, "ok": True}),
            span("invoke_agent researcher", trace, sub, tool, start=122, end=170,
                 attributes=agent("researcher")),
            span("chat", trace, new_id(8), sub, start=123, end=130, attributes=chat((50, 5))),
        )  # fmt: skip
        self.failed = (new_id(16), new_id(8))
        api.send(
            span("invoke_agent billing", self.failed[0], self.failed[1], start=300, end=310,
                 attributes=agent("billing", **{"tracehouse.run.trigger": "manual"}),
                 error="card declined"),
        )  # fmt: skip
        self.running = (new_id(16), new_id(8))
        api.send(
            span("chat", self.running[0], new_id(8), self.running[1], start=400, end=410,
                 attributes=chat((1, 1))),
        )  # fmt: skip


@pytest.fixture(scope="module")
def api(chdb_dir: Path) -> Iterator[Api]:
    server = RunningServer(
        server_settings(f"chdb://{chdb_dir}?database=api_{next(_databases)}")
    ).start()
    yield Api(server)
    server.stop()


@pytest.fixture(scope="module")
def world(api: Api) -> World:
    return World(api)


def names(body: Any) -> list[str]:
    return [run["name"] for run in body["runs"]]


def test_the_run_list_is_newest_first_with_counts(api: Api, world: World) -> None:
    body = api.get("/runs")
    models.RunList.model_validate(body)
    assert names(body) == ["chat", "billing", "Weather_Agent"]
    assert body["counts"] == {"all": 3, "running": 1, "completed": 1, "failed": 1, "cancelled": 0}
    assert body["next_cursor"] is None
    weather = body["runs"][2]
    assert weather["run_id"] == world.weather[1].hex()
    assert weather["trace_id"] == world.weather[0].hex()
    assert weather["started_at"].endswith("Z")
    assert weather["duration_ms"] == pytest.approx(100.0)
    assert weather["step_count"] == 4
    assert weather["tokens"] == {"input": 150, "output": 15, "total": 165}
    assert weather["cost_usd"] == pytest.approx(150 * 2.5e-6 + 15 * 10e-6)
    assert (weather["trigger"], weather["version"], weather["session_id"]) == (
        "scheduled", "v2", "sess-1",
    )  # fmt: skip


def test_counts_ignore_the_status_filter_and_apply_every_other(api: Api, world: World) -> None:
    failed = api.get("/runs", status="failed")
    assert names(failed) == ["billing"]
    assert failed["counts"]["all"] == 3
    both = api.get("/runs", status=["failed", "running"])
    assert names(both) == ["chat", "billing"]
    scheduled = api.get("/runs", trigger="scheduled", status="failed")
    assert names(scheduled) == []
    assert scheduled["counts"] == {"all": 1, "running": 0, "completed": 1, "failed": 0,
                                   "cancelled": 0}  # fmt: skip


def test_search_by_name_run_id_or_trace_id(api: Api, world: World) -> None:
    assert names(api.get("/runs", q="weather_")) == ["Weather_Agent"]
    assert names(api.get("/runs", q="WEATHER")) == ["Weather_Agent"]
    assert names(api.get("/runs", q=world.failed[1].hex()[:12])) == ["billing"]
    assert names(api.get("/runs", q=world.failed[0].hex()[:20].upper())) == ["billing"]
    assert names(api.get("/runs", q="no such run")) == []
    assert names(api.get("/runs", name="billing")) == ["billing"]
    assert names(api.get("/runs", name="Billing")) == []
    assert names(api.get("/runs", version="v2")) == ["Weather_Agent"]
    assert names(api.get("/runs", session="sess-1")) == ["Weather_Agent"]


def test_time_range_in_rfc3339_or_unix_milliseconds(api: Api, world: World) -> None:
    since_ms = (BASE_NS + 250 * 1_000_000) // 1_000_000
    assert names(api.get("/runs", since=str(since_ms))) == ["chat", "billing"]
    assert names(api.get("/runs", until=str(since_ms))) == ["Weather_Agent"]
    from tracehouse.query_api.views import rfc3339

    assert names(api.get("/runs", since=rfc3339(BASE_NS + 350 * 1_000_000))) == ["chat"]


def test_sub_runs_are_listed_only_when_asked(api: Api, world: World) -> None:
    body = api.get("/runs", include_subruns="true", q="researcher")
    assert names(body) == ["researcher"]
    researcher = body["runs"][0]
    assert researcher["parent_run_id"] == world.weather[1].hex()
    assert researcher["trigger"] == "subagent"
    assert researcher["tokens"]["total"] == 55
    assert researcher["step_count"] == 1
    assert api.get("/runs", include_subruns="true")["counts"]["all"] == 4


def test_run_header_by_run_id_trace_id_and_sub_run_id(api: Api, world: World) -> None:
    trace, root = world.weather
    by_run = api.get(f"/runs/{root.hex()}")
    models.RunHeader.model_validate(by_run)
    assert api.get(f"/runs/{trace.hex()}") == by_run
    assert api.get(f"/runs/{root.hex().upper()}") == by_run
    sub = api.get(f"/runs/{world.sub.hex()}")
    assert (sub["name"], sub["parent_run_id"]) == ("researcher", root.hex())
    running = api.get(f"/runs/{world.running[1].hex()}")
    assert (running["status"], running["ended_at"], running["duration_ms"]) == (
        "running", None, None,
    )  # fmt: skip
    failed = api.get(f"/runs/{world.failed[1].hex()}")
    assert failed["error"] == {"type": "", "message": "card declined"}


def test_unknown_and_malformed_ids_answer_with_the_error_envelope(api: Api, world: World) -> None:
    missing = api.get(f"/runs/{new_id(8).hex()}", 404)
    assert missing["error"]["code"] == "not_found"
    assert api.get("/runs/not-hex", 422)["error"]["code"] == "invalid_request"
    # A step id is not a run id.
    assert api.get(f"/runs/{world.tool.hex()}", 404)["error"]["code"] == "not_found"
    assert api.get("/nothing-here", 404)["error"]["code"] == "not_found"
    for bad in ({"status": "done"}, {"limit": "0"}, {"limit": "501"}, {"cursor": "abc"},
                {"since": "yesterday"}):  # fmt: skip
        body = api.get("/runs", 422, **bad)
        assert set(body) == {"error"}
        assert body["error"]["message"]


def test_the_tree_nests_sub_runs_inline(api: Api, world: World) -> None:
    body = api.get(f"/runs/{world.weather[1].hex()}/tree")
    models.RunTree.model_validate(body)
    root = body["root"]
    assert root["run_id"] == world.weather[1].hex()
    assert [c["kind"] for c in root["children"]] == ["llm", "tool"]
    tool = root["children"][1]
    assert (tool["name"], tool["child_count"]) == ("lookup", 1)
    researcher = tool["children"][0]
    assert (researcher["kind"], researcher["run_id"], researcher["parent_run_id"]) == (
        "agent", world.sub.hex(), world.weather[1].hex(),
    )  # fmt: skip
    assert researcher["tokens"]["total"] == 55
    assert researcher["children"][0]["kind"] == "llm"
    assert researcher["children"][0]["children"] == []


def test_depth_cuts_the_tree_and_from_reads_on(api: Api, world: World) -> None:
    run = world.weather[1].hex()
    alone = api.get(f"/runs/{run}/tree", depth=0)["root"]
    assert (alone["children"], alone["child_count"]) == (None, 2)
    one = api.get(f"/runs/{run}/tree", depth=1)["root"]
    tool = one["children"][1]
    assert (tool["children"], tool["child_count"]) == (None, 1)
    below = api.get(f"/runs/{run}/tree", depth=1, **{"from": world.tool.hex()})
    assert below["root"]["step_id"] == world.tool.hex()
    assert below["root"]["children"][0]["run_id"] == world.sub.hex()
    assert below["root"]["children"][0]["children"] is None
    api.get(f"/runs/{run}/tree", 404, **{"from": new_id(8).hex()})
    api.get(f"/runs/{run}/tree", 422, depth=-1)


def test_step_detail_has_args_result_and_typed_attributes(api: Api, world: World) -> None:
    run, tool = world.weather[1].hex(), world.tool.hex()
    body = api.get(f"/runs/{run}/steps/{tool}")
    models.StepDetail.model_validate(body)
    assert body["args"] == {"city": "Paris"}
    assert body["result"] == "sunny"
    assert "input" not in body
    assert body["attributes"]["retries"] == 2
    assert body["attributes"]["ok"] is True
    assert body["resource"]["service"] == "svc"
    assert body["child_count"] == 1
    # A step of a sub-run is found through its parent run too.
    sub_steps = api.get(f"/runs/{world.sub.hex()}/tree")["root"]["children"]
    chat_step = api.get(f"/runs/{run}/steps/{sub_steps[0]['step_id']}")
    assert chat_step["kind"] == "llm"
    assert "input" in chat_step
    # ...but not through a run it does not belong to.
    api.get(f"/runs/{world.failed[1].hex()}/steps/{tool}", 404)


def test_paging_while_runs_arrive_never_repeats_or_skips(api: Api) -> None:
    batch = new_id(16).hex()[:8]
    for i in range(23):
        name = f"page-{batch}-{i}"
        api.send(span(f"invoke_agent {name}", new_id(16), new_id(8), start=1000 + i,
                      end=1001 + i, attributes=agent(name)))  # fmt: skip
    seen: list[str] = []
    cursor: str | None = None
    for page in itertools.count():
        query: dict[str, Any] = {"q": f"page-{batch}", "limit": 5}
        if cursor:
            query["cursor"] = cursor
        body = api.get("/runs", **query)
        seen += names(body)
        # Newer runs keep arriving between pages.
        api.send(span(f"invoke_agent page-{batch}-late-{page}", new_id(16), new_id(8),
                      start=5000 + page, end=5001 + page,
                      attributes=agent(f"page-{batch}-late-{page}")))  # fmt: skip
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"page-{batch}-{i}" for i in reversed(range(23))]


def test_stats_count_runs_tokens_and_cost(api: Api, world: World) -> None:
    from tracehouse.query_api.views import rfc3339

    body = api.get("/stats", since=rfc3339(BASE_NS), until=rfc3339(BASE_NS + 999 * 1_000_000),
                   bucket="1m")  # fmt: skip
    models.Stats.model_validate(body)
    assert body["runs"]["by_status"] == {"running": 1, "completed": 1, "failed": 1,
                                         "cancelled": 0}  # fmt: skip
    assert body["runs"]["error_rate"] == pytest.approx(0.5)
    gpt = next(m for m in body["by_model"] if m["model"] == "gpt-4o")
    assert gpt["calls"] == 3
    assert gpt["tokens"]["total"] == 100 + 10 + 50 + 5 + 2
    weather = next(n for n in body["by_run_name"] if n["name"] == "Weather_Agent")
    assert weather["tokens"]["total"] == 165
    assert weather["cost_usd"] == pytest.approx(150 * 2.5e-6 + 15 * 10e-6)
    assert body["duration_ms"]["p50"] is not None
    api.get("/stats", 422, bucket="0")
    api.get("/stats", 422, bucket="1s", since="0")


def test_openapi_documents_every_route(api: Api) -> None:
    schema = httpx.get(f"{api.server.api_base}/openapi.json").json()
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/tree",
                 "/api/v1/runs/{run_id}/steps/{step_id}", "/api/v1/stats"):  # fmt: skip
        assert "get" in schema["paths"][path]
    assert "RunHeader" in schema["components"]["schemas"]


def test_a_tree_read_again_shows_the_steps_that_arrived_since(api: Api) -> None:
    trace, root = new_id(16), new_id(8)
    api.send(span("invoke_agent grower", trace, root, start=2000, end=2100,
                  attributes=agent("grower")))  # fmt: skip
    first = api.get(f"/runs/{root.hex()}/tree")
    assert first["root"]["children"] == []
    assert api.get(f"/runs/{root.hex()}/tree") == first
    api.send(span("chat", trace, new_id(8), root, start=2010, end=2020, attributes=chat((3, 4))))
    again = api.get(f"/runs/{root.hex()}/tree")
    assert [c["kind"] for c in again["root"]["children"]] == ["llm"]
    assert again["run"]["tokens"]["total"] == 7

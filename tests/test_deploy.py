"""deploy/: what it names exists, its files agree, and its dashboard answers as the API does.

Neither Docker images nor a ClickHouse server can be fetched here, so the
compose file and the Kubernetes manifests are not run; what can drift
unseen is checked instead: settings and commands they name, the users and
passwords three files share, and the SQL of every dashboard panel, run (as
Grafana's read-only user would) against real runs.
"""

from __future__ import annotations

import json
import re
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from clickhouse_connect.driver.client import Client

from builders import BASE_NS, Runs, chat, new_id, span
from tracehouse.cli import parser
from tracehouse.query_api.run_list import RunList
from tracehouse.query_api.runs import run_page
from tracehouse.query_api.sql import RunFilter
from tracehouse.query_api.store import Store
from tracehouse.settings import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
MANIFESTS = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "tracehouse.yaml").read_text()))
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "tracehouse.json").read_text())
DATASOURCE = yaml.safe_load(
    (DEPLOY / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
)["datasources"][0]


def users() -> dict[str, str]:
    """ClickHouse users of deploy/clickhouse/users.xml, with their passwords."""
    found = ET.parse(DEPLOY / "clickhouse" / "users.xml").getroot().find("users")
    assert found is not None
    return {user.tag: user.findtext("password", "") for user in found}


def operator_users() -> dict[str, str]:
    """The same users as the Kubernetes ClickHouseInstallation makes them."""
    installation = yaml.safe_load((DEPLOY / "kubernetes" / "clickhouse.yaml").read_text())
    settings = installation["spec"]["configuration"]["users"]
    return {
        key.split("/")[0]: value for key, value in settings.items() if key.endswith("/password")
    }


def containers() -> list[dict[str, Any]]:
    return [
        container
        for manifest in MANIFESTS
        if manifest["kind"] in ("Deployment", "Job")
        for container in manifest["spec"]["template"]["spec"]["containers"]
    ]


def test_every_setting_named_in_deploy_is_a_setting() -> None:
    known = {f"TRACEHOUSE_{name.upper()}" for name in Settings.model_fields}
    named = {
        name
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for name in re.findall(r"TRACEHOUSE_[A-Z_]+", path.read_text())
    }
    assert "TRACEHOUSE_CLICKHOUSE_URL" in named
    assert named <= known, named - known


def is_command(argv: list[str]) -> bool:
    try:
        parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def test_every_command_run_by_deploy_is_a_tracehouse_command() -> None:
    compose = [s["command"] for s in COMPOSE["services"].values() if "command" in s]
    kubernetes = [c["args"] for c in containers()]
    dockerfile = re.search(r"^CMD (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert dockerfile
    default = json.loads(dockerfile.group(1))
    assert (
        {a[0] for a in compose}
        == {a[0] for a in kubernetes}
        == {"migrate", "collector", "query-api"}
    )
    assert default == ["serve"]
    assert all(is_command(argv) for argv in [*compose, *kubernetes, default])
    assert not is_command(["no-such-command"])


def test_the_services_and_grafana_log_in_as_users_clickhouse_has() -> None:
    known = users()
    assert operator_users() == known
    dsns = [COMPOSE["x-tracehouse"]["environment"]["TRACEHOUSE_CLICKHOUSE_URL"]] + [
        m["stringData"]["TRACEHOUSE_CLICKHOUSE_URL"] for m in MANIFESTS if m["kind"] == "Secret"
    ]
    for dsn in dsns:
        parts = urlsplit(dsn)
        assert parts.username, dsn
        assert known[parts.username] == parts.password, dsn
        assert parts.path == "/" + DATASOURCE["jsonData"]["defaultDatabase"]
    grafana = DATASOURCE["jsonData"]["username"]
    assert known[grafana] == DATASOURCE["secureJsonData"]["password"]
    assert {p["datasource"]["uid"] for p in DASHBOARD["panels"]} == {DATASOURCE["uid"]}


def test_the_ports_published_are_the_services_ports() -> None:
    fields = Settings.model_fields
    published = {
        int(port.split(":")[1])
        for service in COMPOSE["services"].values()
        for port in service.get("ports", ())
    }
    ours = {fields[name].default for name in ("grpc_port", "http_port", "api_port")}
    assert ours <= published
    exposed = {p["containerPort"] for c in containers() for p in c.get("ports", ())}
    assert exposed == ours


# -- the dashboard, against real runs ----------------------------------------------------

HOUR_S = 3600
FROM_S, TO_S = BASE_NS // 10**9 - HOUR_S, BASE_NS // 10**9 + HOUR_S


def grafana_sql(sql: str) -> str:
    """The panel's SQL as Grafana's ClickHouse plugin sends it, for the test's hour either side."""
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 >= toDateTime({FROM_S}) AND \1 <= toDateTime({TO_S})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(toDateTime(\1), INTERVAL 60 second)", sql
    )
    return sql.replace("${project:sqlstring}", "'default'")


def panel(db: Client, title: str) -> list[dict[str, Any]]:
    (found,) = [p for p in DASHBOARD["panels"] if p["title"] == title]
    # As Grafana's read-only user: reading, and setting per-query settings.
    answer = db.query(grafana_sql(found["targets"][0]["rawSql"]), settings={"readonly": 2})
    return list(answer.named_results())


def tool(name: str) -> dict[str, Any]:
    return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}


def agent_runs(runs: Runs) -> None:
    """Runs of every status: completed and failed ones with LLM calls and tools, one running."""
    for n in range(6):
        trace, root = new_id(16), new_id(8)
        start = n * 1000
        failed = n in (1, 4)
        steps = [
            span("chat gpt-4o", trace, new_id(8), root, start=start + 1, end=start + 50,
                 attributes=chat((100 + n, 10), "gpt-4o")),
            span("chat gpt-4o-mini", trace, new_id(8), root, start=start + 60, end=start + 70,
                 attributes=chat((50, 5), "gpt-4o-mini")),
            span("execute_tool search", trace, new_id(8), root, start=start + 80,
                 end=start + 90 + n, attributes=tool("search"),
                 error="search is down" if failed else None),
        ]  # fmt: skip
        if n == 5:  # still running: its root has not ended
            runs.send(*steps)
            continue
        runs.send(
            *steps,
            span("invoke_agent helper", trace, root, start=start, end=start + 100 * (n + 1),
                 attributes={"gen_ai.operation.name": "invoke_agent",
                             "gen_ai.agent.name": "helper"},
                 error="the search failed" if failed else None),
        )  # fmt: skip


@pytest.fixture
def listed(db: Client) -> Store:
    agent_runs(Runs(db))
    store = Store(db, run_list_margin_s=0)
    RunList(store, 1).refresh()
    return store


def test_the_dashboard_counts_the_runs_the_api_lists(db: Client, listed: Store) -> None:
    page = run_page(listed, "default", RunFilter(), None, 100)
    by_status: dict[str, int] = {}
    for row in panel(db, "Runs started, by status"):
        by_status[row["status"]] = by_status.get(row["status"], 0) + row["runs"]
    assert by_status == {s: n for s, n in page.counts.items() if s != "all" and n}
    assert by_status == {"completed": 3, "failed": 2, "running": 1}

    (share,) = panel(db, "Runs failed")
    assert share["failed"] == pytest.approx(2 / 5)

    failed = {r.run_id: r.error.message for r in page.runs if r.status == "failed" and r.error}
    rows = panel(db, "Latest failed runs")
    assert {r["run_id"]: r["error_message"] for r in rows} == failed
    assert [r["started"] for r in rows] == sorted((r["started"] for r in rows), reverse=True)

    durations = [
        (r.ended_ns - r.started_ns) / 1e6 for r in page.runs if r.ended_ns is not None
    ]  # fmt: skip
    (timing,) = panel(db, "Run duration")
    assert min(durations) <= timing["p50"] <= timing["p95"] <= max(durations)
    assert timing["p50"] == statistics.median(durations)


def test_the_dashboard_sums_llm_calls_and_tools_as_sent(db: Client, listed: Store) -> None:
    tokens: dict[str, int] = {}
    for row in panel(db, "LLM tokens, by model"):
        tokens[row["model"]] = tokens.get(row["model"], 0) + row["tokens"]
    assert tokens == {"gpt-4o": sum(100 + n + 10 for n in range(6)), "gpt-4o-mini": 6 * 55}

    page = run_page(listed, "default", RunFilter(), None, 100)
    costs = {row["model"]: row for row in panel(db, "Cost, by model")}
    assert {m: r["calls"] for m, r in costs.items()} == {"gpt-4o": 6, "gpt-4o-mini": 6}
    assert costs["gpt-4o"]["input_tokens"] == sum(100 + n for n in range(6))
    assert sum(r["cost_usd"] for r in costs.values()) == pytest.approx(
        sum(r.cost_usd or 0 for r in page.runs)
    )
    assert costs["gpt-4o"]["cost_usd"] > costs["gpt-4o-mini"]["cost_usd"] > 0

    (tools,) = panel(db, "Tools: calls, failures, p95")
    assert (tools["tool"], tools["calls"], tools["failed"]) == ("search", 6, 2)
    assert 10 <= tools["p95_ms"] <= 15


def test_the_project_picker_offers_the_projects_with_runs(db: Client, listed: Store) -> None:
    variable = DASHBOARD["templating"]["list"][0]
    assert variable["name"] == "project"
    projects = db.query(variable["query"], settings={"readonly": 2}).result_rows
    assert projects == [("default",)]

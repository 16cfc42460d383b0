"""API keys and projects: who may send, who may read, and that no project sees another's runs.

One real server with keys for two projects (plus an ingest-only and a
read-only key); spans arrive over real OTLP/HTTP and OTLP/gRPC; every REST
endpoint and both WebSockets are tried with each kind of key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
import websockets
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp_trace

from builders import new_id, request, span
from conftest import RunningServer, server_settings
from tracehouse.keys import ApiKeys, KeyConfigError

KEY_A = "alpha-key-0123456789"
KEY_B = "beta-key-0123456789a"
INGEST_ONLY = "alpha-ingest-0123456"
READ_ONLY = "alpha-read-012345678"
ALL_KEYS = (KEY_A, KEY_B, INGEST_ONLY, READ_ONLY)

AGENT = {"gen_ai.operation.name": "invoke_agent"}
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Tenants:
    """A server with two projects, each holding one run."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.alpha = self._run("alpha_agent")
        self.beta = self._run("beta_agent")
        assert self.send_http(self.alpha[1], KEY_A).status_code == 200
        code, _ = self.send_grpc(self.beta[1], KEY_B)
        assert code == grpc.StatusCode.OK

    @staticmethod
    def _run(name: str) -> tuple[str, list[Any]]:
        trace, root, tool = new_id(16), new_id(8), new_id(8)
        spans = [
            span(f"invoke_agent {name}", trace, root, end=9,
                 attributes=AGENT | {"gen_ai.agent.name": name}),
            span("execute_tool lookup", trace, tool, root, start=1, end=2,
                 attributes={"gen_ai.tool.name": "lookup"}),
        ]  # fmt: skip
        return root.hex(), spans

    def send_http(
        self, spans: list[Any], key: str | None, header: str = "bearer"
    ) -> httpx.Response:
        headers = {"Content-Type": "application/x-protobuf"}
        if key and header == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        elif key:
            headers["x-api-key"] = key
        body = request(spans).SerializeToString()
        return httpx.post(f"{self.server.http_base}/v1/traces", content=body, headers=headers)

    def send_grpc(self, spans: list[Any], key: str | None) -> tuple[grpc.StatusCode, str]:
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        with grpc.insecure_channel(self.server.grpc_endpoint) as channel:
            export = channel.unary_unary(TRACE_EXPORT)
            try:
                reply = export(request(spans).SerializeToString(), metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        otlp_trace.ExportTraceServiceResponse.FromString(reply)
        return grpc.StatusCode.OK, ""

    def get(self, path: str, key: str | None, **query: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.server.api_base}/api/v1{path}", params=query, headers=headers)

    def ws_url(self, path: str) -> str:
        return self.server.api_base.replace("http://", "ws://") + f"/api/v1{path}"


@pytest.fixture
def tenants(dsn: str, tmp_path: Path) -> Iterator[Tenants]:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"# key project [use]\n{KEY_A} alpha\n{INGEST_ONLY} alpha ingest\n{READ_ONLY} alpha read\n"
    )
    settings = server_settings(dsn, api_keys_file=keys_file, api_keys=f"{KEY_B}=beta")
    running = RunningServer(settings).start()
    yield Tenants(running)
    running.stop()


def test_sending_needs_a_key_that_may_ingest(tenants: Tenants) -> None:
    _, spans = Tenants._run("intruder")
    missing = tenants.send_http(spans, None)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert tenants.send_http(spans, "not-a-key-at-all-0000").status_code == 401
    assert tenants.send_http(spans, READ_ONLY).status_code == 403
    assert tenants.send_http(spans, INGEST_ONLY, header="x-api-key").status_code == 200

    assert tenants.send_grpc(spans, None)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert tenants.send_grpc(spans, "not-a-key-at-all-0000")[0] == grpc.StatusCode.UNAUTHENTICATED
    assert tenants.send_grpc(spans, READ_ONLY)[0] == grpc.StatusCode.PERMISSION_DENIED


def test_reading_needs_a_key_that_may_read(tenants: Tenants) -> None:
    missing = tenants.get("/runs", None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert tenants.get("/runs", "not-a-key-at-all-0000").status_code == 401
    forbidden = tenants.get("/runs", INGEST_ONLY)
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["code"] == "forbidden"
    assert tenants.get("/runs", READ_ONLY).status_code == 200
    # Health and the API's description stay open, for probes and tooling.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(f"{tenants.server.api_base}{path}").status_code == 200


@pytest.mark.parametrize(
    ("key", "own", "other"), [(KEY_A, "alpha", "beta"), (KEY_B, "beta", "alpha")]
)
def test_a_project_sees_its_own_runs_and_nothing_of_another(
    tenants: Tenants, key: str, own: str, other: str
) -> None:
    mine = tenants.alpha[0] if own == "alpha" else tenants.beta[0]
    theirs = tenants.beta[0] if own == "alpha" else tenants.alpha[0]
    listed = tenants.get("/runs", key).json()
    assert [r["name"] for r in listed["runs"]] == [f"{own}_agent"]
    assert listed["counts"]["all"] == 1
    assert tenants.get("/runs", key, include_subruns="true").json()["counts"]["all"] == 1
    # Searching by the other project's name or id finds nothing.
    for q in (f"{other}_agent", theirs[:6], theirs):
        found = tenants.get("/runs", key, q=q).json()
        assert (found["runs"], found["counts"]["all"]) == ([], 0)
    assert tenants.get("/runs", key, name=f"{other}_agent").json()["runs"] == []

    tree = tenants.get(f"/runs/{mine}/tree", key).json()
    tool_id = tree["root"]["children"][0]["step_id"]
    assert tenants.get(f"/runs/{mine}/steps/{tool_id}", key).status_code == 200
    their_tree = tenants.get(f"/runs/{theirs}/tree", tenants_key_of(other)).json()
    their_tool = their_tree["root"]["children"][0]["step_id"]
    their_trace = their_tree["run"]["trace_id"]
    for path in (
        f"/runs/{theirs}",
        f"/runs/{their_trace}",
        f"/runs/{theirs}/tree",
        f"/runs/{theirs}/steps/{their_tool}",
        f"/runs/{mine}/steps/{their_tool}",  # a step id guessed into one's own run
    ):
        answer = tenants.get(path, key)
        assert answer.status_code == 404, (path, answer.text)

    stats = tenants.get("/stats", key, since="2026-01-01T00:00:00Z", bucket="1d").json()
    assert stats["runs"]["total"] == 1
    assert [row["name"] for row in stats["by_run_name"]] == [f"{own}_agent"]


def tenants_key_of(project: str) -> str:
    return KEY_A if project == "alpha" else KEY_B


def test_websockets_need_a_key_and_stay_in_their_project(tenants: Tenants) -> None:
    asyncio.run(_websockets(tenants))


async def _websockets(tenants: Tenants) -> None:
    alpha, beta = tenants.alpha[0], tenants.beta[0]
    for path, headers, status in (
        (f"/runs/{alpha}/live", {}, 401),
        (f"/runs/{alpha}/live", {"Authorization": f"Bearer {INGEST_ONLY}"}, 403),
        (f"/runs/{beta}/live", {"Authorization": f"Bearer {KEY_A}"}, 404),
        ("/live", {}, 401),
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(tenants.ws_url(path), additional_headers=headers):
                pass
        assert refused.value.response.status_code == status, path

    # A browser passes the key in the URL; the run's own project answers.
    async with websockets.connect(tenants.ws_url(f"/runs/{alpha}/live?api_key={KEY_A}")) as ws:
        snapshot = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert snapshot["run"]["name"] == "alpha_agent"

    # The alpha list hears of new alpha runs, never of beta's.
    url = tenants.ws_url("/live")
    async with websockets.connect(url, additional_headers={"x-api-key": KEY_A}) as alpha_list:
        _, beta_spans = Tenants._run("beta_late")
        _, alpha_spans = Tenants._run("alpha_late")
        assert tenants.send_http(beta_spans, KEY_B).status_code == 200
        assert tenants.send_http(alpha_spans, KEY_A).status_code == 200
        names = set()
        while "alpha_late" not in names:
            message = orjson.loads(await asyncio.wait_for(alpha_list.recv(), 10))
            names.add(message["run"]["name"])
        assert names == {"alpha_late"}


def test_no_key_reaches_the_logs(tenants: Tenants, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _, spans = Tenants._run("logged")
    tenants.send_http(spans, KEY_A)
    tenants.send_http(spans, "wrong-key-0123456789")
    tenants.get("/runs", KEY_A)
    tenants.get("/runs", "wrong-key-0123456789")
    text = caplog.text + repr(tenants.server.settings)
    assert not any(key in text for key in (*ALL_KEYS, "wrong-key-0123456789"))


@pytest.mark.parametrize(
    ("file_text", "pairs", "problem"),
    [
        ("short alpha\n", "", "at least 16"),
        (f"{KEY_A}\n", "", "expected KEY PROJECT"),
        (f"{KEY_A} alpha write\n", "", "`ingest` or `read`"),
        (f"{KEY_A} alpha ingest read\n", "", "expected KEY PROJECT"),
        (f"{KEY_A} al/pha\n", "", "must be 1-64"),
        (f"{KEY_A} alpha\n", f"{KEY_A}=beta", "configured twice"),
    ],
)
def test_a_bad_key_configuration_is_refused_with_the_reason(
    tmp_path: Path, file_text: str, pairs: str, problem: str
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(file_text)
    with pytest.raises(KeyConfigError, match=problem):
        ApiKeys.load(keys_file, pairs)

"""Shared fixtures: one chDB engine for the session, a database per test, real servers.

chDB allows one engine path per process, so every test shares one data
directory and gets a database of its own; servers run in a background
thread of the test process, on free ports, against that database, and the
test reads what they stored through a client of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from builders import Runs
from tracehouse.query_api.assembly import Step
from tracehouse.schema.clickhouse import open_client
from tracehouse.schema.rows import decode_attributes
from tracehouse.serve import Ports, Roles, serve
from tracehouse.settings import Settings

# The captured exports given with the design (../shared/fixtures/otlp), kept
# in the repository: a clean clone, as CI runs, has nothing beside it.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "otlp"

_databases = itertools.count()


class RunningServer:
    """`tracehouse serve` in a thread of this process, on free ports."""

    def __init__(self, settings: Settings, roles: Roles | None = None) -> None:
        self.settings = settings
        self._roles = roles or Roles()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.ports = Ports()
        self._thread = threading.Thread(target=self._run, name="tracehouse-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await serve(self.settings, self._roles, self._stop, on_ready=self._on_ready)

    def _on_ready(self, ports: Ports) -> None:
        self.ports = ports
        self._ready.set()

    def start(self) -> RunningServer:
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("server did not start in 60 s")
        if self._failure:
            raise self._failure
        return self

    def stop(self) -> None:
        if self._loop and self._stop and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "server did not stop in 60 s"
        if self._failure:
            raise self._failure

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def dsn(chdb_dir: Path) -> Iterator[str]:
    database = f"test_{next(_databases)}"
    yield f"chdb://{chdb_dir}?database={database}"
    # Dropped after the test: hundreds of databases left behind keep the one
    # engine busy merging, and every later test slows down.
    drop_database(chdb_dir, database)


def drop_database(chdb_dir: Path, database: str) -> None:
    client = open_client(f"chdb://{chdb_dir}")
    try:
        client.command(f"DROP DATABASE IF EXISTS `{database}` SYNC")
    finally:
        client.close()


def server_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "grpc_port": 0,
        "http_port": 0,
        "api_port": 0,
        "clickhouse_url": dsn,
        "batch_max_delay_ms": 5.0,
        # One decode worker process is enough for a test's exports, and two
        # test processes share two cores.
        "decode_workers": 1,
    }
    return Settings(**(values | overrides))


@pytest.fixture
def server(dsn: str) -> Iterator[RunningServer]:
    running = RunningServer(server_settings(dsn)).start()
    yield running
    running.stop()


@pytest.fixture
def db(dsn: str) -> Iterator[Client]:
    """A client on the test's database, for reading back what the server stored."""
    client = open_client(dsn)
    yield client
    client.close()


def read_spans(client: Client) -> dict[str, dict[str, Any]]:
    """Every stored span by span id (deduplicated), attributes typed again."""
    result = client.query(
        "SELECT *, toUnixTimestamp64Nano(Timestamp) AS start_ns,"
        " arrayMap(t -> toUnixTimestamp64Nano(t), `Events.Timestamp`) AS event_ns"
        " FROM spans FINAL"
    )
    spans = {}
    for row in result.named_results():
        types = row["AttributeTypes"]
        row["attributes"] = decode_attributes(row["SpanAttributes"], types, "s")
        row["resource"] = decode_attributes(row["ResourceAttributes"], types, "r")
        row["scope_attributes"] = decode_attributes(row["ScopeAttributes"], types, "c")
        row["events"] = [
            (name, ns, decode_attributes(attrs, types, f"e{i}"))
            for i, (name, ns, attrs) in enumerate(
                zip(row["Events.Name"], row["event_ns"], row["Events.Attributes"], strict=True)
            )
        ]
        row["links"] = [
            (trace, span, state, decode_attributes(attrs, types, f"l{i}"))
            for i, (trace, span, state, attrs) in enumerate(
                zip(
                    row["Links.TraceId"],
                    row["Links.SpanId"],
                    row["Links.TraceState"],
                    row["Links.Attributes"],
                    strict=True,
                )
            )
        ]
        spans[row["SpanId"]] = row
    return spans


# The shape users see: runs and their steps, LangChain's inner chains left out.
SHOWN = ("agent", "workflow", "llm", "tool", "node", "retriever", "embedding")


def render(step: Step, depth: int = 0) -> Iterator[str]:
    """A tree as indented `kind name status` lines, sub-runs marked."""
    row = step.row
    shown = depth == 0 or row.kind in SHOWN or step.run is not None
    if shown:
        kind = step.run.kind if step.run else row.kind
        sub_run = " (sub-run)" if depth and step.run else ""
        yield f"{'  ' * depth}{kind} {row.name} {row.status}{sub_run}"
    for child in step.children:
        yield from render(child, depth + 1 if shown else depth)


def shape(step: Step) -> str:
    return "\n".join(render(step))


@pytest.fixture
def runs(db: Client) -> Runs:
    return Runs(db)

"""Running a tracehouse process: storage, then the collector and/or the query API.

One lifespan for the whole process. Start order matters: ClickHouse is
opened and migrated before anything listens; on the way out the collector
stops (and writes what it accepted) before its ClickHouse client closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass

from tracehouse.keys import ApiKeys
from tracehouse.listeners import HttpListener
from tracehouse.schema.clickhouse import open_client, redact
from tracehouse.schema.ddl import SINGLE_NODE
from tracehouse.schema.migrations import heal_runs, migrate
from tracehouse.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Roles:
    collector: bool = True
    query_api: bool = True


@dataclass(frozen=True, slots=True)
class Ports:
    """Where the process listens (0 for a role it does not run)."""

    grpc: int = 0
    http: int = 0
    api: int = 0


def run_migrations(settings: Settings, heal: bool = False) -> list[int]:
    """Bring the schema up to date (and, before a collector starts, heal runs after a crash)."""
    with closing(open_client(settings.dsn)) as client:
        applied = migrate(client, SINGLE_NODE, settings.retention_days)
        if heal:
            heal_runs(client, SINGLE_NODE)
        return applied


async def serve(
    settings: Settings,
    roles: Roles,
    stop: asyncio.Event,
    on_ready: Callable[[Ports], None] | None = None,
) -> None:
    """Serve until `stop` is set, then shut down cleanly."""
    # Imported here so `tracehouse migrate` does not load gRPC and FastAPI.
    from tracehouse.collector.service import Collector
    from tracehouse.query_api.app import create_app
    from tracehouse.query_api.feed import ClickHouseTail, Feed
    from tracehouse.query_api.run_list import RunList
    from tracehouse.query_api.store import Store

    # A bad key configuration is refused before storage is touched.
    keys = ApiKeys.load(settings.api_keys_file, settings.api_keys)
    log.info("API keys: %s", "required" if keys.enabled else "none configured (project default)")
    log.info("storage: %s", redact(settings.dsn))
    applied = await asyncio.to_thread(run_migrations, settings, roles.collector)
    if applied:
        log.info("schema migrated to version %d", max(applied))
    transport = live_transport(settings, roles)
    async with AsyncExitStack() as stack:
        ports = Ports()
        feed = await stack.enter_async_context(Feed())
        if roles.collector:
            # The write path and the read path get a client each: one client
            # runs one query at a time, and a long read must not stall ingest.
            write_client = stack.enter_context(closing(open_client(settings.dsn)))
            announce = feed.announce if transport == "process" else None
            collector = await stack.enter_async_context(
                Collector(settings, write_client, keys, announce)
            )
            ports = Ports(grpc=collector.grpc_port, http=collector.http_port)
        if roles.query_api:
            # ClickHouse itself stops a read that runs past the request timeout.
            limit = {"max_execution_time": max(1, round(settings.request_timeout_s))}
            read_clients = [
                stack.enter_context(closing(open_client(settings.dsn, limit)))
                for _ in range(settings.read_clients)
            ]
            store = Store(read_clients, settings.stale_after_s)
            await asyncio.to_thread(store.warm)
            if settings.run_list_refresh_s:
                refresh_client = stack.enter_context(closing(open_client(settings.dsn)))
                await stack.enter_async_context(
                    RunList(Store(refresh_client), settings.run_list_refresh_s)
                )
            if transport == "clickhouse":
                tail_client = stack.enter_context(closing(open_client(settings.dsn)))
                tail = ClickHouseTail(Store(tail_client), feed, settings.live_poll_ms / 1000)
                await stack.enter_async_context(tail)
            api = await stack.enter_async_context(
                HttpListener(
                    create_app(settings, store, feed, keys), settings.host, settings.api_port
                )
            )
            ports = Ports(ports.grpc, ports.http, api.port)
            log.info("query API listening on http://%s:%d/api/v1", settings.host, api.port)
            log.info("live updates: %s", transport)
        collect_cycles_less_often()
        if on_ready:
            on_ready(ports)
        await stop.wait()
        log.info("shutting down")


def collect_cycles_less_often() -> None:
    """Keep Python's cycle collector out of the way of big trees, once everything has started.

    It walks the young objects every 700 allocations and the whole heap at
    every quarter of growth; a 100,000-step tree is ~500,000 objects, none of
    them garbage, and those walks were half of its first read (1.5 → 0.7 s).
    What start made (modules, the price table) is frozen out of every walk.
    Reference counting frees everything as before; cycles wait a little longer.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def live_transport(settings: Settings, roles: Roles) -> str:
    """How the WebSockets hear of new spans: from the collector here, or from ClickHouse."""
    if settings.live_transport != "auto":
        if settings.live_transport == "process" and not roles.collector:
            log.warning("live transport 'process' without a collector here: nothing will be live")
        return settings.live_transport
    return "process" if roles.collector else "clickhouse"


def run_forever(settings: Settings, roles: Roles) -> None:
    """Serve until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        await serve(settings, roles, stop)

    asyncio.run(main())

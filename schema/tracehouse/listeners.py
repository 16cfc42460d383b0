"""An HTTP listener as an async context manager: an ASGI app served by uvicorn.

Both services serve HTTP (OTLP/HTTP, the query API) inside a process whose
lifespan we own, so uvicorn's own signal handling and lifespan are off: the
socket is bound here (its real port known at once, port 0 included) and the
server is stopped when the context exits, after in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


class HttpListener:
    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self._config = uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=10
        )
        self._server = uvicorn.Server(self._config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY only then,
        # and without it every keep-alive answer waits ~40 ms on Nagle.
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._address = (host, port)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def __aenter__(self) -> HttpListener:
        self._socket.bind(self._address)
        self.port = self._socket.getsockname()[1]
        self._config.load()
        self._server.lifespan = self._config.lifespan_class(self._config)
        await self._server.startup(sockets=[self._socket])
        self._task = asyncio.create_task(self._server.main_loop(), name=f"http:{self.port}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        if self._task:
            await self._task
        await self._server.shutdown(sockets=[self._socket])
        self._socket.close()

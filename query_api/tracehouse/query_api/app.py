"""The query API application: `create_app(settings, store)`.

Routes are thin: they validate, call the store on a worker thread, and
serve. Every error leaves as the envelope of DESIGN.md §4:
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tracehouse.keys import ApiKeys, Forbidden, Unauthorized
from tracehouse.metrics import metrics_endpoint
from tracehouse.query_api.feed import Feed
from tracehouse.query_api.live_routes import router as live_router
from tracehouse.query_api.params import BadParameter
from tracehouse.query_api.routes import NotFound, router
from tracehouse.query_api.runs import TreeCache
from tracehouse.query_api.store import QueryTimeout, Store
from tracehouse.query_api.watches import Watches
from tracehouse.schema.clickhouse import StorageError
from tracehouse.settings import Settings

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(
    settings: Settings, store: Store, feed: Feed, keys: ApiKeys | None = None
) -> FastAPI:
    app = FastAPI(
        title="tracehouse query API",
        version="1",
    )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, _CODES.get(exc.status_code, "error"), str(exc.detail)
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        response = error_response(401, "unauthorized", str(exc))
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error_response(403, "forbidden", str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, "not_found", str(exc))

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path)
        return error_response(500, "internal", "unexpected error; it has been logged")

    @app.exception_handler(QueryTimeout)
    async def timeout(request: Request, exc: QueryTimeout) -> JSONResponse:
        return error_response(504, "query_timeout", str(exc))

    @app.exception_handler(StorageError)
    async def storage(request: Request, exc: StorageError) -> JSONResponse:
        return error_response(503, "storage_unavailable", str(exc))

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)

    @app.get("/readyz", summary="ClickHouse answers and the schema is current")
    async def readyz() -> JSONResponse:
        if await run_in_threadpool(store.ready):
            return JSONResponse({"status": "ready"})
        return error_response(503, "not_ready", "schema migrations are not all applied")

    app.state.settings = settings
    app.state.store = store
    app.state.trees = TreeCache(settings.tree_cache_steps)
    app.state.feed = feed
    app.state.watches = Watches(store, app.state.trees, feed)
    app.state.keys = keys or ApiKeys({})
    app.include_router(router)
    app.include_router(live_router)
    if origins := [o.strip() for o in settings.cors_origins.split(",") if o.strip()]:
        # Closed unless configured: reads are only for the origins named.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET"],
            allow_headers=["Authorization", "X-Api-Key"],
        )
    return app


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 429: "too_many_requests"}  # fmt: skip

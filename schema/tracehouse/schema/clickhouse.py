"""Opening ClickHouse: one DSN, embedded chDB or a server, the same client.

chDB registers itself as a clickhouse-connect backend, so `chdb:///path` and
`http(s)://user:pass@host:8123/db` both give a `clickhouse_connect` client
and the same SQL runs on both.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from tracehouse.schema.ddl import quote_identifier

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "tracehouse"


class StorageError(Exception):
    """ClickHouse could not do what was asked; the message says what and why."""


def split_database(dsn: str) -> tuple[str, str]:
    """The DSN without its database, and the database (`tracehouse` if none is named).

    A server DSN names it in the path (`http://host:8123/db`); a chDB DSN,
    whose path is the data directory, in `?database=`.
    """
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "chdb":
        database = query.pop("database", "") or DEFAULT_DATABASE
        path = parts.path
    else:
        database = parts.path.strip("/") or DEFAULT_DATABASE
        path = ""
    bare = urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))
    return bare, database


def open_client(dsn: str, settings: dict[str, Any] | None = None) -> Client:
    """A client on the DSN's database, created first if it does not exist."""
    bare, database = split_database(dsn)
    try:
        bootstrap = clickhouse_connect.get_client(dsn=bare)
        try:
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
        finally:
            bootstrap.close()
        return clickhouse_connect.get_client(dsn=bare, database=database, settings=settings or {})
    except ClickHouseError as exc:
        raise StorageError(f"cannot open ClickHouse at {redact(dsn)}: {exc}") from exc


def redact(dsn: str) -> str:
    """The DSN with its password replaced, fit for logs and errors."""
    parts = urlsplit(dsn)
    if not parts.password:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))

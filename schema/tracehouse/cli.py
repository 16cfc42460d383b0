"""The `tracehouse` command: serve, collector, query-api, migrate.

Flags override `TRACEHOUSE_*` environment variables, which override the
defaults of `Settings`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from tracehouse.keys import KeyConfigError
from tracehouse.schema.clickhouse import StorageError
from tracehouse.settings import Settings

log = logging.getLogger("tracehouse")

_STORAGE_FLAGS = (
    ("--data-dir", "data_dir", str, "directory for embedded ClickHouse data (./data)"),
    ("--clickhouse-url", "clickhouse_url", str,
     "ClickHouse DSN: chdb:///path or http(s)://user:pass@host:8123/db"),
    ("--retention-days", "retention_days", int, "days spans are kept, 0 for ever (30)"),
    ("--log-level", "log_level", str, "debug, info, warning or error (info)"),
)  # fmt: skip
_HOST_FLAG = (
    ("--host", "host", str, "address to listen on (127.0.0.1)"),
    ("--api-keys-file", "api_keys_file", str,
     "API keys, one `KEY PROJECT [ingest|read]` a line (none: no keys asked for)"),
)  # fmt: skip
_COLLECTOR_FLAGS = (
    ("--grpc-port", "grpc_port", int, "OTLP/gRPC port (4317)"),
    ("--http-port", "http_port", int, "OTLP/HTTP port (4318)"),
)
_API_FLAGS = (("--api-port", "api_port", int, "query API port (8000)"),)

_COMMANDS = {
    "serve": ("collector and query API in one process (embedded mode)",
              _HOST_FLAG + _COLLECTOR_FLAGS + _API_FLAGS + _STORAGE_FLAGS),
    "collector": ("the OTLP collector alone", _HOST_FLAG + _COLLECTOR_FLAGS + _STORAGE_FLAGS),
    "query-api": ("the query API alone", _HOST_FLAG + _API_FLAGS + _STORAGE_FLAGS),
    "migrate": ("apply schema migrations and exit", _STORAGE_FLAGS),
}  # fmt: skip


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tracehouse", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)
    for name, (help_text, flags) in _COMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=help_text)
        for flag, dest, kind, flag_help in flags:
            command.add_argument(flag, dest=dest, type=kind, default=None, help=flag_help)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k != "command" and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"tracehouse: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    from tracehouse.serve import Roles, run_forever, run_migrations

    try:
        if args.command == "migrate":
            applied = run_migrations(settings)
            log.info("migrations applied: %s", applied or "none (schema is current)")
            return 0
        roles = Roles(collector=args.command != "query-api", query_api=args.command != "collector")
        run_forever(settings, roles)
    except KeyConfigError as exc:
        log.error("%s", exc)
        return 2
    except StorageError as exc:
        hint = ""
        if settings.embedded:
            hint = (" (embedded ClickHouse belongs to one process: run `tracehouse serve`,"
                    " or point separate processes at a ClickHouse server)")  # fmt: skip
        log.error("%s%s", exc, hint)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

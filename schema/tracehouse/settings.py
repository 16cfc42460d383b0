"""The one settings object of a tracehouse process.

Read once at start from `TRACEHOUSE_*` environment variables, overridden by
command-line flags, validated, and passed down. Nothing else reads the
environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything a tracehouse process can be told. Defaults serve one laptop."""

    model_config = SettingsConfigDict(env_prefix="TRACEHOUSE_", frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address every listener binds to.")
    grpc_port: int = Field(4317, ge=0, le=65535, description="OTLP/gRPC port (0: any free).")
    http_port: int = Field(4318, ge=0, le=65535, description="OTLP/HTTP port (0: any free).")
    api_port: int = Field(8000, ge=0, le=65535, description="Query API port (0: any free).")
    data_dir: Path = Field(Path("data"), description="Where embedded ClickHouse keeps its files.")
    clickhouse_url: str = Field(
        "",
        description="ClickHouse DSN: chdb:///path (embedded) or http(s)://user:pass@host:8123/db. "
        "Empty: chdb:///<data-dir>/clickhouse.",
    )
    retention_days: int = Field(30, ge=0, description="Days spans are kept; 0 keeps them forever.")
    max_message_bytes: int = Field(
        16 * MIB, gt=0, description="Largest OTLP request accepted, as sent on the wire."
    )
    max_decompressed_bytes: int = Field(
        64 * MIB, gt=0, description="Largest OTLP request accepted once decompressed."
    )
    max_value_bytes: int = Field(
        MIB, gt=256, description="An input or output longer than this is cut, with a marker."
    )
    max_spans_per_request: int = Field(
        50_000, gt=0, description="More spans than this in one request are refused (413)."
    )
    max_attributes: int = Field(
        1024, gt=0, description="Attributes kept per span, event or link; more are dropped."
    )
    max_events: int = Field(1024, gt=0, description="Events kept per span; more are dropped.")
    max_links: int = Field(128, gt=0, description="Links kept per span; more are dropped.")
    decode_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Processes decoding, mapping and encoding exports (default: one per core).",
    )
    batch_max_spans: int = Field(20_000, gt=0, description="Spans one insert takes at most.")
    # An SDK's exports are up to 512 spans: one that size is worth an insert
    # of its own, and waiting for company only delays it (see batcher.py).
    batch_ready_spans: int = Field(
        256, gt=0, description="A batch this large is written without waiting for more..."
    )
    # How long small exports wait for company: one insert (and one part to
    # merge) for many one-span exports, not one each. 20, not 50: ~25 ms off
    # each such export, for more inserts only where arrivals are sparse.
    batch_max_delay_ms: float = Field(
        20.0, gt=0, description="...or once its oldest span has waited this long."
    )
    queue_max_spans: int = Field(
        200_000, gt=0, description="Spans waiting to be written before exports are refused."
    )
    tree_cache_steps: int = Field(
        500_000, ge=0, description="Steps of assembled run trees the query API keeps in memory."
    )
    stale_after_s: float = Field(
        1800.0, gt=0, description="A running run with no new span for this long is flagged stale."
    )
    # 3, not 1: under 10,000 spans/s of ingest the refresher's fold and
    # delete took ~10% of the machine (saturation 18.4k -> 20.0k spans/s, p99
    # at 10,000 spans/s 151 -> 115 ms), and lists, which read what moved since
    # fresh, were no slower for it (first page under 5,000 spans/s 201 -> 185 ms).
    run_list_refresh_s: float = Field(
        3.0,
        ge=0,
        description="How often the query API folds the runs that moved into its list; 0: never"
        " (for all but one of several query API processes on one ClickHouse).",
    )
    live_transport: str = Field(
        "auto",
        pattern="^(auto|process|clickhouse)$",
        description="How the query API learns of new spans for its WebSockets: `process` (from "
        "the collector in this process), `clickhouse` (tailing ClickHouse by arrival time, for a "
        "query API running apart from the collector), `auto` (process when both run here).",
    )
    live_poll_ms: float = Field(
        50.0, gt=0, description="How often the ClickHouse tail looks for new spans and logs."
    )
    live_buffer_messages: int = Field(
        1000, gt=0, description="Messages a WebSocket client may fall behind before it is dropped."
    )
    api_keys_file: Path | None = Field(
        None, description="API keys, one `KEY PROJECT [ingest|read]` a line. None: no keys."
    )
    api_keys: str = Field(
        "", repr=False, description="API keys as `KEY=PROJECT[:ingest|:read],...`."
    )
    cors_origins: str = Field(
        "", description="Origins (comma-separated, or `*`) the query API answers from browsers."
    )
    # One client runs one query at a time (chDB holds a lock per client; over
    # HTTP a client's session takes one query at a time): requests read
    # through a few, so a slow one (a big tree, the stats) holds up no other.
    read_clients: int = Field(
        4, ge=1, le=64, description="ClickHouse clients the query API reads through at once."
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest an OTLP body may take to arrive, or a query to run."
    )
    log_level: str = Field("info", pattern="^(debug|info|warning|error)$")
    log_format: str = Field("text", pattern="^(text|json)$", description="json: one object a line.")

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.queue_max_spans < self.batch_max_spans:
            raise ValueError("queue_max_spans must be at least batch_max_spans")
        return self

    @property
    def dsn(self) -> str:
        """The ClickHouse DSN in force: the configured one, or embedded under data_dir."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded(self) -> bool:
        return self.dsn.startswith("chdb:")

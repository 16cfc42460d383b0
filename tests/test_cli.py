"""The `tracehouse` command as a user runs it: a real process, real signals, real exporters."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from test_ingest import record_spans

TRACEHOUSE = str(Path(sys.executable).with_name("tracehouse"))
LISTENING = re.compile(r"(OTLP/gRPC|OTLP/HTTP|query API) listening on \S*?:(\d+)")


class Process:
    """A `tracehouse` process whose log lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._listening = threading.Event()
        self.popen = subprocess.Popen(
            [TRACEHOUSE, *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr
        for line in self.popen.stderr:
            self.lines.append(line)
            if match := LISTENING.search(line):
                self.ports[match[1]] = int(match[2])
                if len(self.ports) == 3:
                    self._listening.set()

    def wait_listening(self) -> dict[str, int]:
        assert self._listening.wait(60), "".join(self.lines)
        return self.ports

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.popen.send_signal(sig)
        code = self.popen.wait(60)
        self._reader.join(10)
        return code


def count_spans(data_dir: Path) -> int:
    """Count stored spans from a fresh process (chDB allows one data path per process)."""
    script = (
        "import sys; from tracehouse.schema.clickhouse import open_client; "
        "c = open_client(sys.argv[1]); "
        "print(c.query('SELECT count() FROM spans FINAL').result_rows[0][0])"
    )
    dsn = f"chdb://{(data_dir / 'clickhouse').resolve()}"
    out = subprocess.run(
        [sys.executable, "-c", script, dsn], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_stores_spans_and_shuts_down_cleanly(data_dir: Path, sig: int) -> None:
    server = Process(
        ["serve", "--grpc-port", "0", "--http-port", "0", "--data-dir", str(data_dir)],
        env={"TRACEHOUSE_API_PORT": "0"},
    )
    ports = server.wait_listening()
    spans = record_spans()
    exporter = GrpcExporter(endpoint=f"127.0.0.1:{ports['OTLP/gRPC']}", insecure=True)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert httpx.get(f"http://127.0.0.1:{ports['OTLP/HTTP']}/healthz").status_code == 200
    assert httpx.get(f"http://127.0.0.1:{ports['query API']}/readyz").status_code == 200

    assert server.stop(sig) == 0
    log = "".join(server.lines)
    assert "collector stopped; every accepted span is written" in log
    assert "Traceback" not in log
    assert count_spans(data_dir) == len(spans)


def test_migrate_is_idempotent_and_says_so(data_dir: Path) -> None:
    first = subprocess.run(
        [TRACEHOUSE, "migrate", "--data-dir", str(data_dir)], capture_output=True, text=True
    )
    again = subprocess.run(
        [TRACEHOUSE, "migrate", "--data-dir", str(data_dir)], capture_output=True, text=True
    )

    assert first.returncode == again.returncode == 0
    assert "applied migration 1" in first.stderr
    assert "none (schema is current)" in again.stderr
    assert count_spans(data_dir) == 0


def test_json_logs_are_one_object_a_line(data_dir: Path) -> None:
    result = subprocess.run(
        [TRACEHOUSE, "migrate", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRACEHOUSE_LOG_FORMAT": "json"},
    )
    assert result.returncode == 0
    entries = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= entries[0].keys()
    assert any(e["message"].startswith("applied migration 1") for e in entries)


def test_a_bad_api_keys_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("short alpha\n")
    result = subprocess.run(
        [TRACEHOUSE, "serve", "--data-dir", str(tmp_path), "--api-keys-file", str(keys)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr
    assert "short" not in result.stderr  # where the problem is (keys:1), never the key


def test_invalid_settings_are_refused_with_a_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [TRACEHOUSE, "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRACEHOUSE_GRPC_PORT": "99999"},
    )
    assert result.returncode == 2
    assert "grpc_port" in result.stderr


def test_a_second_embedded_process_on_the_same_data_is_told_why(data_dir: Path) -> None:
    ports = ["--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
    first = Process(["serve", *ports, "--data-dir", str(data_dir)])
    first.wait_listening()
    try:
        second = subprocess.run(
            [TRACEHOUSE, "query-api", "--api-port", "0", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        assert first.stop() == 0
    assert second.returncode == 1
    assert "embedded ClickHouse belongs to one process" in second.stderr

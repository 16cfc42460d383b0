"""The README's client-helper example runs as written and shows a live run's text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import RunningServer

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    start = text.index("# pip install 'tracehouse[client]'")
    return text[start : text.index("```", start)]


def test_the_readme_client_example_runs_against_a_server(server: RunningServer) -> None:
    # The SDK's exporters read their endpoint from the standard variable.
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": server.http_base}
    result = subprocess.run(
        [sys.executable, "-c", readme_example()], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr

    runs = httpx.get(f"{server.api_base}/api/v1/runs").json()["runs"]
    assert [(r["name"], r["kind"], r["status"]) for r in runs] == [("demo", "agent", "completed")]
    tree = httpx.get(f"{server.api_base}/api/v1/runs/{runs[0]['run_id']}/tree").json()
    [chat] = tree["root"]["children"]
    detail = httpx.get(
        f"{server.api_base}/api/v1/runs/{runs[0]['run_id']}/steps/{chat['step_id']}"
    ).json()
    assert detail["streams"] == {"output": "Hello, world"}

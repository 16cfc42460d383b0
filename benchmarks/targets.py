"""Collectors under test, each a subprocess of its own with a fresh temporary directory.

A target is where the benchmark's exporters send (its OTLP gRPC and HTTP
ports), its process as /proc shows it (CPU time, peak RSS), and two probes
of what it has persisted: a count that grows to what was sent, and the
spans stored for one run. `Server` is `tracehouse serve`; the peer
benchmark adds Arize Phoenix (benchmarks/peer.py).

The probes block: the harness calls them in a thread.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import httpx

TICKS = os.sysconf("SC_CLK_TCK")
# What the thread names seen in the collector process are doing. chDB runs a
# query on the Python thread that calls it and names that thread "Unknown".
CHILD_PROCESSES = "child processes"
THREAD_LABELS = {
    CHILD_PROCESSES: "decode worker processes (protobuf parse, mapping, Native encoding)",
    "python": "python threads (gRPC server, to_thread)",
    "Unknown": "chDB query threads (writer: the INSERT)",
    "MergeMutate": "MergeMutate (ClickHouse background merges)",
}

Unit = Literal["runs", "spans"]


class Target(Protocol):
    """A collector the ingest harness can load and read back."""

    name: str
    grpc: int
    http: int
    unit: Unit  # what `persisted` counts: the runs its API lists, or the span rows it stored

    def wait_ready(self, timeout: float = 120) -> None: ...

    def stop(self) -> None: ...

    def cpu_seconds(self) -> float: ...

    def thread_cpu(self) -> dict[str, float]: ...

    def memory_mib(self) -> tuple[float, float]: ...

    def persisted(self) -> int:
        """How many runs or spans (`unit`) are persisted and can be read back."""
        ...

    def spans_of(self, trace_id: str) -> int:
        """The spans of one run (hex trace id) that can be read back."""
        ...


class Progress(NamedTuple):
    done: int
    of: int
    unit: Unit
    at: float  # perf_counter when `done` last grew (or reached `of`)

    @property
    def complete(self) -> bool:
        return self.done >= self.of


async def wait_persisted(target: Target, runs: int, spans: int, wait_s: float) -> Progress:
    """Poll the target's count until it holds everything sent, or `wait_s` seconds pass."""
    goal = runs if target.unit == "runs" else spans
    began = time.perf_counter()
    done, at = 0, began
    while True:
        count = await asyncio.to_thread(target.persisted)
        now = time.perf_counter()
        if count > done:
            done, at = count, now
        if done >= goal or now - began >= wait_s:
            return Progress(done, goal, target.unit, at)
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """A server command run in `directory` (removed on stop), read through /proc; `env` is
    its whole environment (None: this process's)."""

    def __init__(
        self, directory: Path, command: list[str], ready_url: str, env: dict[str, str] | None = None
    ) -> None:
        self.dir, self.ready_url = directory, ready_url
        self._log = (self.dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        sys.exit(f"server not ready in {timeout} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return (self.dir / "server.log").read_text(errors="replace")[-3000:]

    def processes(self) -> list[int]:
        """The server and every process under it (the collector's decode workers)."""
        children: dict[int, list[int]] = defaultdict(list)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children[parent].append(int(stat.parent.name))
        found = [self.pid]
        for pid in found:
            found.extend(children.get(pid, ()))
        return found

    def cpu_seconds(self) -> float:
        return sum(self.thread_cpu().values())

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds by thread name (the event loop is the main thread); the server's
        child processes as one entry."""
        seconds: dict[str, float] = defaultdict(float)
        for pid in self.processes():
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    raw = (task / "stat").read_text()
                except OSError:
                    continue  # the thread ended
                name = raw[raw.index("(") + 1 : raw.rindex(")")]
                fields = raw.rpartition(")")[2].split()
                if pid != self.pid:
                    name = CHILD_PROCESSES
                elif task.name == str(self.pid):
                    name = "python main thread (event loop)"
                elif name.startswith("python"):
                    name = "python"
                cpu = (int(fields[11]) + int(fields[12])) / TICKS
                seconds[THREAD_LABELS.get(name, name)] += cpu
        return seconds

    def memory_mib(self) -> tuple[float, float]:
        """(peak RSS, current RSS) from /proc status, summed over the server's processes."""
        peak = current = 0.0
        for pid in self.processes():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            status = dict(line.split(":", 1) for line in lines)
            peak += int(status.get("VmHWM", "0 kB").split()[0]) / 1024
            current += int(status.get("VmRSS", "0 kB").split()[0]) / 1024
        return peak, current

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server(Process):
    """`tracehouse serve` on embedded chDB in a fresh data directory."""

    name = "tracehouse"
    unit: Unit = "runs"

    def __init__(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="tracehouse-ingest-"))
        self.grpc, self.http, self.api = free_port(), free_port(), free_port()
        # Payload timestamps are fixed (a seed gives the same bytes), so no retention TTL.
        command = [sys.executable, "-m", "tracehouse.cli", "serve", "--data-dir", str(directory),
                   "--grpc-port", str(self.grpc), "--http-port", str(self.http),
                   "--api-port", str(self.api), "--retention-days", "0",
                   "--log-level", "warning"]  # fmt: skip
        super().__init__(directory, command, f"http://127.0.0.1:{self.api}/readyz")
        self._query = httpx.Client(base_url=f"http://127.0.0.1:{self.api}", timeout=60)

    def persisted(self) -> int:
        # The run list is what a user sees: a run counts once the query API lists it.
        response = self._query.get("/api/v1/runs", params={"limit": "1"})
        response.raise_for_status()
        return int(response.json()["counts"]["all"])

    def spans_of(self, trace_id: str) -> int:
        response = self._query.get(f"/api/v1/runs/{trace_id}")
        if response.status_code == 404:
            return 0
        response.raise_for_status()
        return int(response.json()["step_count"]) + 1  # every span but the root is a step

    def stop(self) -> None:
        self._query.close()
        super().stop()

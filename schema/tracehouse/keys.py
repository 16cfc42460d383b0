"""API keys: which project a caller is, and what it may do.

Configured (DESIGN.md §4) by `--api-keys-file FILE`, one `KEY PROJECT` pair a
line (an optional third word, `ingest` or `read`, limits the key to sending
telemetry or to reading it; `#` starts a comment), and/or
`TRACEHOUSE_API_KEYS="KEY=PROJECT,KEY=PROJECT"` (`KEY=PROJECT:ingest` for a
limited key). With no keys configured everything is project `default` and
nothing asks for a key.

Callers present a key as `Authorization: Bearer KEY` or `x-api-key: KEY`
(over gRPC, the same metadata). Keys are held only as SHA-256 digests, so a
lookup does not compare secrets byte by byte, and no key is ever logged.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROJECT = "default"
_PROJECT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Use(enum.Enum):
    INGEST = "ingest"  # send telemetry (OTLP)
    READ = "read"  # the query API and its WebSockets


@dataclass(frozen=True, slots=True)
class Grant:
    project: str
    uses: frozenset[Use]


class KeyConfigError(Exception):
    """A key configuration that cannot be used; the message says where and why."""


class Unauthorized(Exception):
    """No key, or a key we do not know (401 / UNAUTHENTICATED)."""


class Forbidden(Exception):
    """A known key that may not do this (403 / PERMISSION_DENIED)."""


class ApiKeys:
    def __init__(self, grants: dict[str, Grant]) -> None:
        self._grants = {_digest(key): grant for key, grant in grants.items()}

    @property
    def enabled(self) -> bool:
        return bool(self._grants)

    def project(self, use: Use, header: Callable[[str], str | None]) -> str:
        """The caller's project, from `header(name)`; raises Unauthorized or Forbidden."""
        if not self._grants:
            return DEFAULT_PROJECT
        key = credential(header)
        grant = self._grants.get(_digest(key)) if key else None
        if grant is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer KEY)")
        if use not in grant.uses:
            raise Forbidden(f"this API key may not {use.value}")
        return grant.project

    @classmethod
    def load(cls, file: Path | None, pairs: str) -> ApiKeys:
        grants: dict[str, Grant] = {}
        if file is not None:
            try:
                text = file.read_text()
            except OSError as exc:
                raise KeyConfigError(f"cannot read API keys file {file}: {exc}") from exc
            for number, line in enumerate(text.splitlines(), 1):
                words = line.partition("#")[0].split()
                if not words:
                    continue
                if len(words) not in (2, 3):
                    raise KeyConfigError(f"{file}:{number}: expected KEY PROJECT [ingest|read]")
                _add(grants, words[0], words[1], words[2:], f"{file}:{number}")
        for number, item in enumerate(filter(None, (p.strip() for p in pairs.split(","))), 1):
            key, _, grant = item.partition("=")
            project, _, use = grant.partition(":")
            where = f"TRACEHOUSE_API_KEYS item {number}"
            _add(grants, key.strip(), project.strip(), [use] if use else [], where)
        return cls(grants)


def credential(header: Callable[[str], str | None]) -> str | None:
    """The key a caller presented, if any."""
    authorization = header("authorization") or ""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return (header("x-api-key") or "").strip() or None


def _add(grants: dict[str, Grant], key: str, project: str, use: Iterable[str], where: str) -> None:
    if len(key) < 16:
        raise KeyConfigError(f"{where}: a key must be at least 16 characters")
    if not _PROJECT.match(project):
        raise KeyConfigError(f"{where}: project {project!r} must be 1-64 letters, digits, _ . -")
    try:
        uses = frozenset(Use(u) for u in use) if use else frozenset(Use)
    except ValueError as exc:
        raise KeyConfigError(f"{where}: a key's use is `ingest` or `read`") from exc
    if key in grants:
        raise KeyConfigError(f"{where}: this key is configured twice")
    grants[key] = Grant(project, uses)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()

"""Query parameters in, typed values out, or a clear 4xx.

Every value a client sends passes through here before the store sees it:
ids must be hex of the right length, times RFC 3339 or unix milliseconds,
cursors ours. Nothing is interpreted by SQL text.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime, timedelta

import orjson

from tracehouse.schema.rows import Status

RUN_ID = re.compile(r"(?:[0-9a-f]{16}|[0-9a-f]{32})")
STEP_ID = re.compile(r"[0-9a-f]{16}")
_BUCKET = re.compile(r"([0-9]+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
STATUSES = tuple(s.value for s in Status)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadParameter(ValueError):
    """A query parameter that cannot mean anything; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def run_id(value: str) -> str:
    lowered = value.lower()
    if not RUN_ID.fullmatch(lowered):
        raise BadParameter("run_id", "must be 16 hex characters (or 32 for a trace id)")
    return lowered


def step_id(value: str) -> str:
    lowered = value.lower()
    if not STEP_ID.fullmatch(lowered):
        raise BadParameter("step_id", "must be 16 hex characters")
    return lowered


def statuses(values: list[str]) -> tuple[str, ...]:
    for value in values:
        if value not in STATUSES:
            raise BadParameter("status", f"must be one of {', '.join(STATUSES)}")
    return tuple(dict.fromkeys(values))


def timestamp_ns(field: str, value: str | None) -> int | None:
    """RFC 3339 (a zone is required unless UTC is meant) or unix milliseconds."""
    if value is None:
        return None
    text = value.strip()
    try:
        if re.fullmatch(r"-?[0-9]{1,19}", text):
            ns = int(text) * 1_000_000
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            # Exact integer arithmetic: float timestamps round before 1970.
            ns = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    except (ValueError, OverflowError):
        raise BadParameter(field, "must be RFC 3339 or unix milliseconds") from None
    if not _INT64_MIN <= ns <= _INT64_MAX:
        raise BadParameter(field, "is outside the years 1677 to 2262")
    return ns


def bucket_seconds(value: str) -> int:
    match = _BUCKET.fullmatch(value.strip().lower())
    if not match or int(match[1]) == 0:
        raise BadParameter("bucket", "must be a positive duration like 300, 5m, 1h or 1d")
    seconds = int(match[1]) * _UNITS[match[2]]
    if seconds > 366 * 86400:
        raise BadParameter("bucket", "must be at most a year")
    return seconds


def encode_cursor(started_ns: int, run: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([started_ns, run])).decode().rstrip("=")


def decode_cursor(value: str | None) -> tuple[int, str] | None:
    if value is None:
        return None
    try:
        started, run = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError):
        raise BadParameter("cursor", "is not a cursor this API gave out") from None
    # `type is int`: JSON true would pass isinstance(..., int) as 1.
    valid = type(started) is int and _INT64_MIN <= started <= _INT64_MAX
    if not valid or not isinstance(run, str) or not RUN_ID.fullmatch(run):
        raise BadParameter("cursor", "is not a cursor this API gave out")
    return started, run

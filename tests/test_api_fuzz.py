"""Hostile input against the query API: every parameter of every endpoint, fuzzed.

A running server holding every captured fixture trace is sent SQL fragments,
quotes, NUL bytes, odd unicode, 10,000-character strings, out-of-range
numbers, raw bytes and repeated parameters. Every answer must be a 200 that
holds to its model in `models.py` or a 4xx in the error envelope of DESIGN.md
§4, never a 5xx; injection strings must match literally; schemathesis then
fuzzes the app's own OpenAPI; and after all of it the data must be intact.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlencode

import httpx
import pytest
import schemathesis
from clickhouse_connect.driver.client import Client
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import FIXTURES, RunningServer, server_settings
from tracehouse.query_api import models, params
from tracehouse.query_api.app import create_app
from tracehouse.query_api.feed import Feed
from tracehouse.query_api.store import Store
from tracehouse.schema.clickhouse import open_client

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ_SLOW = settings(FUZZ, max_examples=40)  # the stats answer costs six queries

STATUSES = params.STATUSES
INJECTIONS = (
    "' OR 1=1 --", "'); DROP TABLE spans; --", '"; DROP TABLE runs; --', "{project:String}",
    "{q:String}", "' UNION SELECT name FROM system.tables --", "\\", "\\'", "\\N", "`", "`spans`",
    "'", '"', "%", "*", "/*", "*/", ";", "--", "\x00", "\t", "\n", "\r\n", "{{7*7}}", "$(id)",
    "') OR sleep(3) OR ('",
)  # fmt: skip
UNICODE = (
    "\u202e", "\u200f", "\u200b", "\ufeff", "🙂", "👩\u200d👩\u200d👧", "e\u0301", "\u0301" * 32,
    "İ", "ß", "\uffff", "\U0010ffff", "中文", "\x00\u202e",
)  # fmt: skip
NUMBERS = (
    "0", "-1", "-0", "1e309", "NaN", "inf", "0x1F", "1_000", "1.5", " 1", "+1",
    "99999999999999999999", str(2**63), str(-(2**63) - 1), "9" * 400,
)  # fmt: skip
# ASCII only: 10,000 of them, percent-encoded, stay under httpx's 64 KiB URL part.
LONG_PIECES = ("a", "' OR 1=1 --", "\\", "\x00", "{project:String}", "%", "`")

fragment = st.one_of(
    st.sampled_from(INJECTIONS + UNICODE + NUMBERS),
    st.text(st.characters(codec="utf-8"), max_size=24),
)
long_text = st.builds(
    lambda piece, n: (piece * n)[:n], st.sampled_from(LONG_PIECES), st.integers(1025, 10_000)
)
hostile = st.one_of(fragment, st.lists(fragment, min_size=2, max_size=6).map("".join), long_text)

hex16 = st.text("0123456789abcdef", min_size=16, max_size=16)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
moment = st.datetimes(datetime(1678, 1, 1), datetime(2262, 1, 1), timezones=st.just(UTC))
timestamp = st.one_of(
    st.integers(-(2**63) // 10**6 + 1, (2**63 - 1) // 10**6).map(str),
    moment.map(lambda m: m.isoformat().replace("+00:00", "Z")),
)
cursor = st.builds(params.encode_cursor, st.integers(-(2**63), 2**63 - 1), hex16 | hex32)
TEXT_FILTERS = ("q", "name", "trigger", "version", "session")
PLAUSIBLE: dict[str, st.SearchStrategy[str]] = {
    "status": st.sampled_from(STATUSES),
    "q": st.sampled_from(("weather", "AGENT", "069d", "")),
    "name": st.sampled_from(("weather_agent", "weather-agent", "research_agent")),
    "trigger": st.sampled_from(("unknown", "subagent")),
    "version": st.just(""),
    "session": st.just(""),
    "since": timestamp,
    "until": timestamp,
    "include_subruns": st.sampled_from(("true", "false", "1", "0", "on", "off", "yes", "no")),
    "limit": st.integers(1, 500).map(str),
    "cursor": cursor,
    "bucket": st.sampled_from(("1h", "5m", "1d", "300", "366d", "1H")),
    "depth": st.integers(0, 100).map(str),
    "from": hex16,
}
LIST_KEYS = ("status", *TEXT_FILTERS, "since", "until", "include_subruns")
RUNS_KEYS = (*LIST_KEYS, "limit", "cursor")
STATS_KEYS = (*LIST_KEYS, "bucket")


class Api:
    """A running server with every fixture trace in it, and what it held at the start."""

    def __init__(self, dsn: str) -> None:
        self.server = RunningServer(server_settings(dsn)).start()
        self.db: Client = open_client(dsn)
        # A connection per request: on a kept-alive one every answer waits
        # ~40 ms for a delayed ACK, as the listener's socket (proto 0) never
        # gets TCP_NODELAY from asyncio.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(base_url=self.server.api_base, limits=no_keepalive, timeout=60)
        for fixture in sorted(FIXTURES.rglob("*.pb")):
            response = httpx.post(
                f"{self.server.http_base}/v1/traces",
                content=fixture.read_bytes(),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200, (fixture, response.text)
        self.runs = self.list_runs(include_subruns="false")
        self.all_runs = self.list_runs(include_subruns="true")
        self.steps = {run.run_id: step_ids(self.tree(run.run_id).root) for run in self.runs}
        self.spans = self.span_count()
        self.tables = self.table_names()

    def list_runs(self, **query: str) -> list[models.RunHeader]:
        response = self.http.get("/api/v1/runs", params={"limit": "500", **query})
        assert response.status_code == 200, response.text
        return models.RunList.model_validate(response.json()).runs

    def tree(self, run_id: str) -> models.RunTree:
        response = self.http.get(f"/api/v1/runs/{run_id}/tree")
        assert response.status_code == 200, response.text
        return models.RunTree.model_validate(response.json())

    def span_count(self) -> int:
        return int(self.db.query("SELECT count() FROM spans").result_rows[0][0])

    def table_names(self) -> list[str]:
        return sorted(str(row[0]) for row in self.db.query("SHOW TABLES").result_rows)

    def close(self) -> None:
        self.http.close()
        self.db.close()
        self.server.stop()


_databases = itertools.count()


@pytest.fixture(scope="module")
def api(chdb_dir: Path) -> Iterator[Api]:
    running = Api(f"chdb://{chdb_dir}?database=api_fuzz_{next(_databases)}")
    yield running
    running.close()


def step_ids(step: models.Step) -> list[str]:
    return [step.step_id] + [i for child in step.children or () for i in step_ids(child)]


def url(path: str, pairs: Sequence[tuple[str, str]] = ()) -> str:
    """Inside a hypothesis test: the request URL, the pairs percent-encoded as UTF-8."""
    query = urlencode(pairs, quote_via=quote)
    assume(len(query) < 60_000)  # httpx refuses a longer URL part before sending
    return f"{path}?{query}" if query else path


def segment(value: str) -> str:
    """A path segment that arrives as `value` (dots escaped so no client folds them)."""
    return quote(value, safe="").replace(".", "%2E")


def answer(response: httpx.Response, model: type[BaseModel]) -> dict[str, Any] | None:
    """A 200 that holds to `model` (its body) or a 4xx in the envelope (None); never a 5xx.

    A path that decodes to a trailing `/` (an id ending in `%2F`) may also get
    Starlette's slash redirect, as long as it stays on this server.
    """
    status = response.status_code
    where = f"{status} for GET {str(response.request.url)[:400]}: {response.text[:600]}"
    if status == 307 and response.request.url.path.endswith("/"):
        assert httpx.URL(response.headers["location"]).host == response.request.url.host, where
        return None
    assert status == 200 or 400 <= status < 500, where
    if status != 200:
        assert response.headers["content-type"] == "application/json", where
        envelope = models.ErrorEnvelope.model_validate(response.json())
        assert envelope.error.code, where
        assert envelope.error.message, where
        assert "Traceback" not in response.text, where
        assert 'File "' not in response.text, where
        return None
    body: dict[str, Any] = response.json()
    model.model_validate(body)
    return body


def pairs_of(keys: Sequence[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """Query pairs over `keys`, repeats included, each value drawn from `values`."""
    return st.lists(st.tuples(st.sampled_from(keys), values), max_size=10)


# -- every parameter hostile: never a 5xx, errors in the envelope ------------------------


@FUZZ
@given(pairs=pairs_of(RUNS_KEYS, hostile))
def test_run_list_survives_hostile_parameters(api: Api, pairs: list[tuple[str, str]]) -> None:
    answer(api.http.get(url("/api/v1/runs", pairs)), models.RunList)


@FUZZ
@given(pairs=pairs_of(STATS_KEYS, hostile))
def test_stats_survive_hostile_parameters(api: Api, pairs: list[tuple[str, str]]) -> None:
    answer(api.http.get(url("/api/v1/stats", pairs)), models.Stats)


def valid_or_hostile(key: str) -> st.SearchStrategy[str]:
    return PLAUSIBLE[key] | hostile


@FUZZ
@given(data=st.data())
def test_mixed_parameters_pass_validation_with_hostile_neighbours(
    api: Api, data: st.DataObject
) -> None:
    """Mostly valid values, so hostile ones reach the store next to them."""
    path, keys = data.draw(
        st.sampled_from((("/api/v1/runs", RUNS_KEYS), ("/api/v1/stats", STATS_KEYS)))
    )
    pairs = data.draw(
        st.lists(st.sampled_from(keys).flatmap(lambda k: st.tuples(st.just(k), PLAUSIBLE[k])))
    )
    pairs.append(data.draw(st.tuples(st.sampled_from(keys), valid_or_hostile("q"))))
    model = models.RunList if path.endswith("runs") else models.Stats
    answer(api.http.get(url(path, pairs)), model)


# -- hostile text filters reach SQL and are matched as values ----------------------------


@FUZZ
@given(data=st.data())
def test_hostile_text_filters_never_widen_the_run_list(api: Api, data: st.DataObject) -> None:
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(TEXT_FILTERS), hostile), min_size=1))
    body = answer(api.http.get(url("/api/v1/runs", [*pairs, ("limit", "500")])), models.RunList)
    if body is None:
        assert any(len(v) > 1024 for _, v in pairs)
        return
    found = models.RunList.model_validate(body)
    assert {r.run_id for r in found.runs} <= {r.run_id for r in api.runs}
    assert found.counts.all == len(found.runs)
    last = dict(pairs)  # a repeated scalar parameter: the last one counts
    for run in found.runs:
        assert "name" not in last or run.name == last["name"]
        assert "trigger" not in last or run.trigger == last["trigger"]
        assert "version" not in last or run.version == last["version"]
        assert "session" not in last or run.session_id == last["session"]


@FUZZ_SLOW
@given(data=st.data())
def test_hostile_text_filters_never_widen_the_stats(api: Api, data: st.DataObject) -> None:
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(TEXT_FILTERS), hostile), min_size=1))
    wide = [("since", "0"), ("bucket", "366d")]
    body = answer(api.http.get(url("/api/v1/stats", [*pairs, *wide])), models.Stats)
    if body is not None:
        assert models.Stats.model_validate(body).runs.total <= len(api.runs)


def matches(run: models.RunHeader, q: str) -> bool:
    """DESIGN.md §4: a case-insensitive substring of the name, or a run or trace id prefix."""
    prefix = q.strip().lower()
    by_id = prefix != "" and all(c in "0123456789abcdef" for c in prefix)
    by_id = by_id and (run.run_id.startswith(prefix) or run.trace_id.startswith(prefix))
    return q.lower() in run.name.lower() or by_id


ascii_q = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(st.characters(max_codepoint=127, exclude_characters="\x00"), max_size=12),
    st.lists(st.sampled_from((*INJECTIONS, "agent", "WEATHER", "_", "-")), max_size=4).map("".join),
)


@FUZZ
@given(q=ascii_q)
def test_q_is_matched_literally(api: Api, q: str) -> None:
    found = api.list_runs(q=q)
    assert sorted(r.run_id for r in found) == sorted(r.run_id for r in api.runs if matches(r, q))


@pytest.mark.parametrize("field", ["q", "name"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_match_nothing(api: Api, field: str, value: str) -> None:
    body = models.RunList.model_validate(api.http.get("/api/v1/runs", params={field: value}).json())
    assert (body.runs, body.counts.all) == ([], 0), (field, value)


def test_q_matches_a_name_case_insensitively(api: Api) -> None:
    expected = sorted(r.run_id for r in api.runs if "weather_agent" in r.name)
    assert expected
    for q in ("WEATHER_AGENT", "Weather_Agent", "eather_agen"):
        assert sorted(r.run_id for r in api.list_runs(q=q)) == expected, q


def test_q_matches_a_run_id_or_trace_id_prefix(api: Api) -> None:
    for run in api.runs[::6]:
        for q in (run.run_id[:7], run.run_id[:7].upper(), run.run_id, run.trace_id[:9]):
            found = {r.run_id for r in api.list_runs(q=q)}
            assert run.run_id in found, q
            assert found == {r.run_id for r in api.runs if matches(r, q)}, q


# -- path parameters and the tree's own --------------------------------------------------


def run_ids(api: Api) -> st.SearchStrategy[str]:
    known = [r.run_id for r in api.all_runs] + [r.trace_id for r in api.runs]
    return st.sampled_from(known) | st.sampled_from(known).map(str.upper) | hex16 | hostile


@FUZZ
@given(data=st.data())
def test_run_header_survives_hostile_ids(api: Api, data: st.DataObject) -> None:
    run_id = data.draw(run_ids(api).filter(bool))
    answer(api.http.get(f"/api/v1/runs/{segment(run_id)}"), models.RunHeader)


def is_depth(value: str | None) -> bool:
    """What the route declares for `depth`: absent, or an int (pydantic's lax parse) 0-100."""
    try:
        return value is None or 0 <= TypeAdapter(int).validate_python(value) <= 100
    except ValidationError:
        return False


@FUZZ
@given(data=st.data())
def test_tree_survives_hostile_depth_and_from(api: Api, data: st.DataObject) -> None:
    run = data.draw(st.sampled_from(api.runs))
    from_step = data.draw(st.none() | st.sampled_from(api.steps[run.run_id]) | hostile)
    depth = data.draw(st.none() | PLAUSIBLE["depth"] | hostile)
    pairs = [(k, v) for k, v in (("from", from_step), ("depth", depth)) if v is not None]
    body = answer(api.http.get(url(f"/api/v1/runs/{run.run_id}/tree", pairs)), models.RunTree)
    if from_step is None or from_step in api.steps[run.run_id]:
        assert (body is not None) == is_depth(depth), (from_step, depth)


@FUZZ
@given(data=st.data())
def test_step_detail_survives_hostile_ids(api: Api, data: st.DataObject) -> None:
    run = data.draw(st.sampled_from(api.runs))
    run_id = data.draw(st.just(run.run_id) | st.just(run.trace_id) | hostile.filter(bool))
    step_id = data.draw(st.sampled_from(api.steps[run.run_id]) | hex16 | hostile.filter(bool))
    path = f"/api/v1/runs/{segment(run_id)}/steps/{segment(step_id)}"
    body = answer(api.http.get(path), models.StepDetail)
    if run_id in (run.run_id, run.trace_id) and step_id in api.steps[run.run_id]:
        assert body is not None
        assert body["step_id"] == step_id


ENDPOINTS: dict[str, type[BaseModel]] = {
    "/api/v1/runs": models.RunList,
    "/api/v1/stats": models.Stats,
    "/api/v1/runs/{}": models.RunHeader,
    "/api/v1/runs/{}/tree": models.RunTree,
    "/api/v1/runs/{}/steps/{}": models.StepDetail,
}


@FUZZ_SLOW
@given(
    endpoint=st.sampled_from(sorted(ENDPOINTS)),
    ids=st.lists(st.binary(min_size=1, max_size=40), min_size=2, max_size=2),
    raw=st.lists(st.tuples(st.binary(max_size=16), st.binary(max_size=40)), max_size=6),
)
def test_raw_bytes_in_path_and_query(
    api: Api, endpoint: str, ids: list[bytes], raw: list[tuple[bytes, bytes]]
) -> None:
    """Invalid UTF-8, overlong forms, lone continuation bytes: percent-encoded as sent."""
    path = endpoint.format(*(quote_from_bytes(i, safe="").replace(".", "%2E") for i in ids))
    query = "&".join(
        f"{quote_from_bytes(k, safe='')}={quote_from_bytes(v, safe='')}" for k, v in raw
    )
    answer(api.http.get(f"{path}?{query}"), ENDPOINTS[endpoint])


@pytest.mark.parametrize(
    "query",
    [
        [("status", "failed")] * 1000,
        [("q", str(i)) for i in range(200)] + [("q", "weather")],
        [("limit", "1"), ("limit", "600")],
        [("limit", "600"), ("limit", "1")],
        [("include_subruns", "true"), ("include_subruns", "\x00")],
        [("cursor", "a"), ("cursor", "")],
        [("since", "0"), ("since", "9" * 30), ("until", "-" * 20)],
    ],
)
def test_repeated_parameters(api: Api, query: list[tuple[str, str]]) -> None:
    answer(api.http.get(f"/api/v1/runs?{urlencode(query)}"), models.RunList)
    answer(api.http.get(f"/api/v1/stats?{urlencode(query)}"), models.Stats)


# -- found by the fuzzing above: kept failing until the server is fixed ------------------


def forged(started: Any, run: Any) -> str:
    # The standard json module: orjson refuses integers past 64 bits.
    return base64.urlsafe_b64encode(json.dumps([started, run]).encode()).decode().rstrip("=")


@FUZZ
@example(started=True, run="0" * 16)
@given(
    started=st.one_of(
        st.integers(-(2**64), 2**64), st.booleans(), st.floats(), st.none(), st.text(max_size=8)
    ),
    # Cut so that the cursor stays under httpx's 64 KiB URL part: in JSON a
    # "\x00" is six characters, and base64 makes those eight.
    run=st.one_of(hex16, hex32, hostile.map(lambda s: s[:4_000]), st.integers(), st.none()),
)
def test_a_forged_cursor_is_a_client_error(api: Api, started: Any, run: Any) -> None:
    """A cursor is opaque but client-held: whatever it decodes to, no 5xx."""
    answer(api.http.get("/api/v1/runs", params={"cursor": forged(started, run)}), models.RunList)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@settings(max_examples=300, deadline=None, database=None)
@example(datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC))
@given(at=st.datetimes(datetime(1677, 9, 22), datetime(2262, 4, 10), timezones=st.just(UTC)))
def test_rfc3339_times_parse_to_the_exact_nanosecond(at: datetime) -> None:
    expected = (at - EPOCH) // timedelta(microseconds=1) * 1000
    assert params.timestamp_ns("since", at.isoformat()) == expected


def test_stats_echo_a_pre_1970_since_unchanged(api: Api) -> None:
    since = "1969-12-31T23:59:59.500000Z"
    query = {"since": since, "until": "2030-01-01T00:00:00Z", "bucket": "366d"}
    body = models.Stats.model_validate(api.http.get("/api/v1/stats", params=query).json())
    assert body.since == since


def test_an_id_with_a_trailing_newline_is_invalid(api: Api) -> None:
    """`$` in params.RUN_ID / STEP_ID also matches before a final newline."""
    run = api.runs[0]
    step = api.steps[run.run_id][-1]
    paths = [
        f"/api/v1/runs/{run.run_id}%0A",
        f"/api/v1/runs/{run.run_id}/tree?from={step}%0A",
        f"/api/v1/runs/{run.run_id}/steps/{step}%0A",
    ]
    answers = {path: api.http.get(path) for path in paths}
    assert {p: r.status_code for p, r in answers.items()} == dict.fromkeys(paths, 422), [
        r.text for r in answers.values()
    ]


# -- schemathesis over the app's own OpenAPI ----------------------------------------------

# schemathesis.pytest.from_fixture needs `Function._nodeid`, which pytest 9
# no longer has: each operation's strategies are driven here instead.
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{run_id}"),
    ("GET", "/api/v1/runs/{run_id}/tree"),
    ("GET", "/api/v1/runs/{run_id}/steps/{step_id}"),
    ("GET", "/api/v1/stats"),
]
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.fixture(scope="module")
def openapi_schema(api: Api) -> Iterator[BaseSchema]:
    """The app in process, on the fuzzed database, with a store of its own."""
    client = open_client(api.server.settings.dsn)
    app = create_app(api.server.settings, Store(client), Feed())
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    client.close()


def test_openapi_lists_every_operation_fuzzed(openapi_schema: BaseSchema) -> None:
    results = list(openapi_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "schemathesis cannot read some operations"
    assert {(op.method.upper(), op.path) for op in operations} == set(OPERATIONS)


POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# Negative cases need a constraint to break: a bare string path parameter has none.
NEGATABLE = {"/api/v1/runs", "/api/v1/runs/{run_id}/tree", "/api/v1/stats"}


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [(m, p, POSITIVE) for m, p in OPERATIONS]
    + [(m, p, NEGATIVE) for m, p in OPERATIONS if p in NEGATABLE],
)
def test_openapi_operation(
    api: Api, openapi_schema: BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = openapi_schema[path][method]
    cases = operation.as_strategy(generation_mode=mode)
    if "{run_id}" in path and mode is POSITIVE:
        # Known ids too, so that 200 bodies are held to the published schema.
        known = [{"run_id": r, "step_id": s[-1]} for r, s in list(api.steps.items())[::5]]
        fixed = [{k: v for k, v in ids.items() if f"{{{k}}}" in path} for ids in known]
        cases = st.one_of(cases, *(operation.as_strategy(path_parameters=ids) for ids in fixed))
    seen: list[int] = []

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case[Any]) -> None:
        seen.append(case.call_and_validate(checks=CHECKS).status_code)

    fuzz()
    assert mode is NEGATIVE or 200 in seen, "no case got past validation"


# -- last: nothing above changed the data ------------------------------------------------


def test_data_is_intact_after_the_fuzzing(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    assert api.span_count() == api.spans
    assert api.table_names() == api.tables
    assert api.list_runs(include_subruns="false") == api.runs
    assert api.list_runs(include_subruns="true") == api.all_runs
